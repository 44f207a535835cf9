"""The anomaly score and the anomaly map of a reconstruction: the residual smoothed before it is squared, the
error taken relative to how much there is in the image, an SSIM map (Bergmann et al.'s AE-SSIM), and a score
read off the map."""

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ae_lightning.autoencoders.similarity import same_size_window
from ae_lightning.autoencoders.similarity import ssim_map as same_size_ssim
from ae_lightning.errors import ConfigError

#: `none`: the summed squared residual; `intensity`: divided by the image's total intensity above the bottom
#: of the value range (its "ink"), at least one full pixel's
ScoreNormalization = Literal["none", "intensity"]
#: what a pixel of the anomaly map measures: `squared_error` of the (smoothed) residual, averaged over
#: channels; `ssim`: 1 - the local structural similarity (Bergmann et al., VISAPP 2019), averaged over
#: channels
MapMeasure = Literal["squared_error", "ssim"]
MAP_MEASURES: tuple[str, ...] = ("squared_error", "ssim")
#: how the image score is read off the map: `none` (the score is the reconstruction error, not the map's),
#: its `max` or its `mean`
ScoreFromMap = Literal["none", "max", "mean"]
SCORE_FROM_MAP: tuple[str, ...] = ("none", "max", "mean")
#: the SSIM map's window in pixels (Wang et al. and Bergmann et al.: 11), narrowed to fit smaller images
SSIM_MAP_WINDOW = 11


def check_score_shape(
    smoothing: float,
    normalization: str,
    image_shape: tuple[int, ...],
    model: str,
    by_reconstruction: bool,
    measure: str = "squared_error",
    from_map: str = "none",
) -> None:
    """Refuses, in one line, a smoothing that is negative or that vector data cannot take, an unknown
    normalization, map measure or score-from-map, and any shaping for a `model` whose score is not a
    reconstruction error."""
    if (smoothing > 0 or normalization != "none" or from_map != "none") and not by_reconstruction:
        raise ConfigError(
            f"{model}'s anomaly score is not a reconstruction error: leave score_smoothing at 0, "
            "score_normalization at none and score_from_map at none (they shape AE-like scores)"
        )
    if measure not in MAP_MEASURES:
        raise ConfigError(f"map_measure must be one of {list(MAP_MEASURES)}, got {measure!r}")
    if from_map not in SCORE_FROM_MAP:
        raise ConfigError(f"score_from_map must be one of {list(SCORE_FROM_MAP)}, got {from_map!r}")
    if (measure != "squared_error" or from_map != "none") and len(image_shape) != 3:
        raise ConfigError(
            "map_measure and score_from_map are about images (C, H, W): vector data take "
            "map_measure squared_error and score_from_map none"
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


def ink(x: Tensor, low: float, high: float) -> Tensor:
    """How much there is in each image (B, C, H, W): its total intensity above the bottom of the value range
    [low, high], at least one full pixel's. (B,) float32"""
    return (x.float() - low).flatten(1).sum(1).clamp_min(high - low)


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
        score = score / ink(x, low, high)
    return score


def ssim_map(x: Tensor, reconstruction: Tensor, value_range: tuple[float, float]) -> Tensor:
    """1 - the local SSIM of each pixel, averaged over channels: (B, C, H, W) -> (B, H, W) float32, in
    [0, 2] (0: the neighbourhoods agree). The images are mirrored at their borders by half a window, so the
    map has their size; the window is `SSIM_MAP_WINDOW` pixels, or the widest odd one that fits."""
    window = min(SSIM_MAP_WINDOW, same_size_window(x.shape))
    return (1 - same_size_ssim(x, reconstruction, value_range[1] - value_range[0], window)).mean(1)


def pixel_map(
    x: Tensor, reconstruction: Tensor, measure: str, smoothing: float, value_range: tuple[float, float]
) -> Tensor:
    """The anomaly map of images (B, C, H, W) and their reconstructions: (B, H, W) float32. `squared_error`:
    the residual, smoothed by a Gaussian of `smoothing` pixels before it is squared (as `residual_score`
    does, so the score with `score_smoothing` is the map's sum times C), averaged over channels; `ssim`:
    `ssim_map`, smoothed after by the Gaussian."""
    if measure == "ssim":
        found = ssim_map(x, reconstruction, value_range)
        return gaussian_blur(found[:, None], smoothing)[:, 0] if smoothing > 0 else found
    residual = x.float() - reconstruction.float()
    if smoothing > 0:
        residual = gaussian_blur(residual, smoothing)
    return residual.square().mean(1)


def score_of_map(
    anomaly_map: Tensor, x: Tensor, reduction: str, normalization: str, low: float, high: float
) -> Tensor:
    """The image score read off its map (B, H, W): its `max` or `mean`, divided by the image's ink (as
    `residual_score`) with `normalization="intensity"`. (B,) float32"""
    flat = anomaly_map.flatten(1)
    score = flat.amax(1) if reduction == "max" else flat.mean(1)
    if normalization == "intensity":
        score = score / ink(x, low, high)
    return score


@dataclass(frozen=True)
class ScoreShape:
    """How a reconstruction becomes an anomaly map and an image score: the `Autoencoder` arguments
    `score_smoothing`, `score_normalization`, `map_measure` and `score_from_map`, and the data's value
    range."""

    smoothing: float = 0.0
    normalization: str = "none"
    measure: str = "squared_error"
    from_map: str = "none"
    value_range: tuple[float, float] = (0.0, 1.0)

    @property
    def reshapes(self) -> bool:
        """Whether the score is other than the reconstruction loss."""
        return self.smoothing > 0 or self.normalization != "none" or self.from_map != "none"

    def map(self, target: Tensor, reconstruction: Tensor) -> Tensor:
        """The anomaly map of images `target` (B, C, H, W) reconstructed as `reconstruction`: (B, H, W)."""
        return pixel_map(target, reconstruction, self.measure, self.smoothing, self.value_range)

    def score(self, target: Tensor, reconstruction: Tensor) -> Tensor:
        """The image score of `target` reconstructed as `reconstruction`, (B,): read off the map
        (`from_map`), or the shaped squared residual."""
        low, high = self.value_range
        if self.from_map != "none":
            found = self.map(target, reconstruction)
            return score_of_map(found, target, self.from_map, self.normalization, low, high)
        return residual_score(target, reconstruction, self.smoothing, self.normalization, low, high)
