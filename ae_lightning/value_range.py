"""The value ranges data can be scaled to, shared by the datamodule, the models and the grid callback."""

from collections.abc import Sequence

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
