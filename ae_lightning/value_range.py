"""The value ranges data can be scaled to, shared by the datamodule, the models and the grid callback."""

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from ae_lightning.errors import ConfigError

#: [-1, 1] (decoders end in tanh) and [0, 1] (decoders end in sigmoid)
VALUE_RANGES = ((-1.0, 1.0), (0.0, 1.0))


def check_value_range(value_range: Sequence[float]) -> tuple[float, float]:
    """Returns `value_range` as a tuple of floats, refusing anything but [-1, 1] and [0, 1]."""
    as_tuple = tuple(float(v) for v in value_range)
    if as_tuple not in VALUE_RANGES:
        raise ConfigError(f"value_range must be [-1, 1] or [0, 1], got {list(value_range)}")
    return as_tuple  # type: ignore[return-value]


def to_unit_interval(x: Tensor, value_range: tuple[float, float]) -> Tensor:
    """Maps data in `value_range` to [0, 1] for display, clamping what falls outside."""
    low, high = value_range
    return ((x - low) / (high - low)).clamp(0, 1)


#: how pixels become binary: drawn (dynamic binarisation, training) or thresholded (deterministic, exports)
Binarize = Literal["sample", "threshold"]


def scale_pixels(
    pixels: Tensor, value_range: tuple[float, float], binarize: Binarize | None = None
) -> Tensor:
    """uint8 pixels (any shape) -> float32 in `value_range`: pixel / 255 mapped linearly onto it. With
    `binarize`, each pixel first becomes 0 or 1: `sample` draws 1 with probability pixel / 255 (dynamic
    binarisation of training data), `threshold` takes 1 above 127 (what an exported graph does: nothing in it
    draws at random). The datamodules and the exported graphs both scale with this function."""
    x = pixels.float().div_(255)
    if binarize == "sample":
        x = torch.bernoulli(x)
    elif binarize == "threshold":
        x = (x > 0.5).float()
    low, high = value_range
    if (low, high) != (0.0, 1.0):
        x = x.mul_(high - low).add_(low)
    return x
