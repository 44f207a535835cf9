"""The process's random streams, saved in checkpoints so a resumed run draws what an unbroken one would."""

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn

#: where the streams are kept in a checkpoint: a list, the streams of each rank in rank order (a checkpoint
#: of an earlier version holds one dict, rank zero's, which then serves every rank)
RNG_STATES_KEY = "ae_lightning_rng_states"


def rng_states(device: torch.device | None = None) -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's generators: the CPU's and, when `device` (the one this
    process trains on) is a GPU, that GPU's. Under DDP each rank has its own device, and so its own stream."""
    states: dict[str, Any] = {
        "python": random.getstate(),
        # as a tensor and plain numbers: a checkpoint loaded with weights_only refuses NumPy arrays
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_states(states: dict[str, Any], device: torch.device | None = None) -> None:
    """Puts back what `rng_states(device)` returned; the GPU stream goes to `device` (a GPU's stream saved on
    a CPU run, or a CPU run resuming a GPU's checkpoint, leaves it as it is)."""
    random.setstate(states["python"])
    name, keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(states["torch"])
    cuda = states.get("cuda")
    if cuda is None or device is None or device.type != "cuda":
        return
    if isinstance(cuda, torch.Tensor):
        torch.cuda.set_rng_state(cuda, device)
    elif len(cuda) == torch.cuda.device_count():  # an earlier version saved every device's stream
        torch.cuda.set_rng_state_all(cuda)


def rank_states(saved: Any, rank: int, world_size: int) -> dict[str, Any]:
    """The streams of `rank` in what a checkpoint holds (`RNG_STATES_KEY`). Resuming on another number of
    processes than saved it cannot continue every stream: rank r takes rank (r mod saved)'s, and a warning
    says so."""
    if isinstance(saved, dict):
        return saved
    if len(saved) != world_size:
        rank_zero_warn(
            f"the checkpoint holds the random streams of {len(saved)} processes, this run has {world_size}: "
            "the resumed run draws other random numbers than an unbroken one would"
        )
    return saved[rank % len(saved)]


def _numpy_state() -> tuple[str, torch.Tensor, int, int, float]:
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    # int64, not NumPy's uint32: torch.distributed pickles objects in a form that cannot hold uint32 tensors
    keys = torch.from_numpy(keys.astype(np.int64))
    return name, keys, int(position), int(has_gauss), float(cached_gaussian)
