"""The anomaly score of a reconstruction, shaped: the residual smoothed before it is squared, and the error
taken relative to how much there is in the image."""

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ae_lightning.errors import ConfigError

#: `none`: the summed squared residual; `intensity`: divided by the image's total intensity above the bottom
#: of the value range (its "ink"), at least one full pixel's
ScoreNormalization = Literal["none", "intensity"]


def check_score_shape(
    smoothing: float, normalization: str, image_shape: tuple[int, ...], model: str, by_reconstruction: bool
) -> None:
    """Refuses, in one line, a smoothing that is negative or that vector data cannot take, an unknown
    normalization, and either for a `model` whose score is not a reconstruction error."""
    if (smoothing > 0 or normalization != "none") and not by_reconstruction:
        raise ConfigError(
            f"{model}'s anomaly score is not a reconstruction error: leave score_smoothing at 0 and "
            "score_normalization at none (they shape AE-like scores)"
        )
    if not smoothing >= 0:
        raise ConfigError(
            f"score_smoothing must be a standard deviation in pixels >= 0 (0: off), got {smoothing}"
        )
    if smoothing > 0 and len(image_shape) != 3:
        raise ConfigError("score_smoothing blurs images (C, H, W): vector data take score_smoothing 0")
    if normalization not in ("none", "intensity"):
        raise ConfigError(f"score_normalization must be 'none' or 'intensity', got {normalization!r}")


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """`x` (B, C, H, W) convolved with a Gaussian of `sigma` pixels (3 sigma each side, zero padding), each
    channel apart: two 1-D convolutions."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    rows = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    cols = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    x = F.conv2d(x, rows, padding=(radius, 0), groups=channels)
    return F.conv2d(x, cols, padding=(0, radius), groups=channels)


def residual_score(
    x: Tensor, reconstruction: Tensor, smoothing: float, normalization: str, low: float, high: float
) -> Tensor:
    """The anomaly score of each image (B,) from its reconstruction: the residual `x - reconstruction`,
    smoothed by a Gaussian of `smoothing` pixels (0: not) before it is squared and summed, so that a stroke
    drawn a pixel aside (a positive and a negative residual side by side) counts less than a stroke that is
    missing; with `normalization="intensity"`, divided by the image's total intensity above `low`, so that an
    image with little in it (a thin digit) is not normal merely because little of it can be wrong. float32."""
    residual = x.float() - reconstruction.float()
    if smoothing > 0:
        residual = gaussian_blur(residual, smoothing)
    score = residual.square().flatten(1).sum(1)
    if normalization == "intensity":
        score = score / (x.float() - low).flatten(1).sum(1).clamp_min(high - low)
    return score
