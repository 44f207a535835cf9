"""The process's random streams, saved in checkpoints so a resumed run draws what an unbroken one would."""

import random
from typing import Any

import numpy as np
import torch

#: where the streams are kept in a checkpoint
RNG_STATES_KEY = "ae_lightning_rng_states"


def rng_states() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's generators (CPU, and every CUDA device in use)."""
    states: dict[str, Any] = {
        "python": random.getstate(),
        # as a tensor and plain numbers: a checkpoint loaded with weights_only refuses NumPy arrays
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Puts back what `rng_states` returned (the CUDA states only when the devices match)."""
    random.setstate(states["python"])
    name, keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((name, keys.numpy(), position, has_gauss, cached_gaussian))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def _numpy_state() -> tuple[str, torch.Tensor, int, int, float]:
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return name, torch.from_numpy(keys.copy()), int(position), int(has_gauss), float(cached_gaussian)
