"""Structural similarity as a reconstruction term: SSIM (Wang et al., 2004) and multi-scale SSIM (Wang,
Simoncelli & Bovik, 2003), with the number of scales chosen so that small images (28 pixels) work. The one
place a model takes (MS-)SSIM from.

Written here rather than taken from torchmetrics: its MS-SSIM convolves with an 11-tap window whatever its
`kernel_size` says, and its depthwise convolutions cost ~0.5 s per forward and backward of a batch of 128
MNIST images on a CPU core (benchmarks/README.md). Here the Gaussian window is applied as two banded
matrix products, the same numbers (tests compare the SSIM map with torchmetrics') at a small part of the
cost on a CPU or a GPU.
"""

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

from ae_lightning.errors import ConfigError

#: the weights of the five scales of Wang et al. (2003), finest first
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
#: the window's standard deviation in pixels, and the stabilising constants' factors (Wang et al., 2004)
SSIM_SIGMA, SSIM_K1, SSIM_K2 = 1.5, 0.01, 0.03


def fits(size: int, scales: int, kernel_size: int) -> bool:
    """Whether images of `size` pixels (the smaller side) still hold one window at the coarsest of `scales`
    scales (each halves the size)."""
    return size // 2 ** (scales - 1) >= kernel_size


def ms_ssim_scales(image_shape: Sequence[int], kernel_size: int, scales: int | None = None) -> int:
    """The scales MS-SSIM uses for images (C, H, W): `scales` if given, else the most (up to five) that
    fit; one line saying what to change where none do."""
    if len(image_shape) != 3:
        raise ConfigError(
            f"MS-SSIM compares images (C, H, W), but the data are vectors of {image_shape[0]} numbers: "
            "use a model with a pixel-wise likelihood"
        )
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ConfigError(f"ssim_kernel_size must be an odd number of pixels, got {kernel_size}")
    size = min(image_shape[1:])
    candidates = [scales] if scales is not None else range(len(MS_SSIM_WEIGHTS), 0, -1)
    for count in candidates:
        if 1 <= count <= len(MS_SSIM_WEIGHTS) and fits(size, count, kernel_size):
            return count
    raise ConfigError(
        f"images of {size} pixels are too small for MS-SSIM with {scales or 1} scale(s) of a "
        f"{kernel_size}-pixel window: lower ssim_kernel_size or ssim_scales"
    )


@functools.lru_cache(maxsize=64)
def window_matrix(size: int, kernel_size: int, device: torch.device) -> Tensor:
    """The normalised Gaussian window (sigma 1.5) of `kernel_size` taps as a banded matrix
    (size - kernel_size + 1, size): rows of it times an image's columns are the window's valid positions.

    Cached, and made outside inference mode whatever the caller's: a matrix first made during validation is
    later saved for the backward pass of a training step, which an inference tensor cannot be."""
    positions = size - kernel_size + 1
    # made on the device where it is used: no copy from the host, which would wait for a GPU
    with torch.inference_mode(False):
        offsets = torch.arange(kernel_size, device=device) - (kernel_size - 1) / 2
        window = torch.exp(-offsets.square() / (2 * SSIM_SIGMA**2))
        taps = (window / window.sum()).expand(positions, kernel_size)
        matrix = torch.zeros(positions, size, device=device)
        columns = torch.arange(positions, device=device)[:, None] + torch.arange(kernel_size, device=device)
        return matrix.scatter_(1, columns, taps)


def ssim_parts(x: Tensor, y: Tensor, data_range: float, kernel_size: int) -> tuple[Tensor, Tensor]:
    """The luminance and the contrast-structure terms of SSIM at every valid window position of images x and
    y (B, C, H, W): each (B, C, H - k + 1, W - k + 1), in float32; their product is the SSIM map."""
    rows = window_matrix(x.shape[-2], kernel_size, x.device)
    columns = window_matrix(x.shape[-1], kernel_size, x.device)
    stacked = torch.stack((x, y, x * x, y * y, x * y))  # (5, B, C, H, W): one product for all five
    mean_x, mean_y, mean_xx, mean_yy, mean_xy = rows @ stacked @ columns.T
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    variance_x = (mean_xx - mean_x.square()).clamp(min=0)
    variance_y = (mean_yy - mean_y.square()).clamp(min=0)
    covariance = mean_xy - mean_x * mean_y
    luminance = (2 * mean_x * mean_y + c1) / (mean_x.square() + mean_y.square() + c1)
    contrast_structure = (2 * covariance + c2) / (variance_x + variance_y + c2)
    return luminance, contrast_structure


def ms_ssim(
    prediction: Tensor, target: Tensor, value_range: tuple[float, float], kernel_size: int, scales: int
) -> Tensor:
    """MS-SSIM of each image pair (B, C, H, W) -> (B,), in float32 whatever the autocast: the mean
    contrast-structure term at each of the first `scales` - 1 scales and the mean SSIM at the last, each
    clipped below at a tiny positive number (negative values, rare, carry no gradient), raised to Wang et
    al.'s weights renormalised over the scales used, multiplied; each scale halves the images (2 x 2
    means). One scale is plain SSIM."""
    weights = MS_SSIM_WEIGHTS[:scales]
    data_range = value_range[1] - value_range[0]
    with torch.autocast(prediction.device.type, enabled=False):
        x, y = prediction.float(), target.float()
        similarity = x.new_zeros(x.shape[0])
        for scale, weight in enumerate(weights):
            luminance, contrast_structure = ssim_parts(x, y, data_range, kernel_size)
            last = scale == scales - 1
            term = (luminance * contrast_structure if last else contrast_structure).flatten(1).mean(1)
            similarity = similarity + weight / sum(weights) * term.clamp(min=1e-6).log()
            if not last:
                x, y = torch.nn.functional.avg_pool2d(x, 2), torch.nn.functional.avg_pool2d(y, 2)
        return similarity.exp()


def ssim(
    prediction: Tensor, target: Tensor, value_range: tuple[float, float], kernel_size: int = 11
) -> Tensor:
    """The mean SSIM of each image pair (B, C, H, W) -> (B,) over the valid window positions, float32."""
    return ms_ssim(prediction, target, value_range, kernel_size, scales=1)


def ssim_map(x: Tensor, y: Tensor, data_range: float, kernel_size: int) -> Tensor:
    """The SSIM of every pixel of images x and y (B, C, H, W), each the centre of its window: the images are
    mirrored at their borders by half a window, so the map has their size. (B, C, H, W) float32."""
    pad = kernel_size // 2
    with torch.autocast(x.device.type, enabled=False):
        x, y = x.float(), y.float()
        if pad:
            x, y = (torch.nn.functional.pad(image, (pad,) * 4, mode="reflect") for image in (x, y))
        luminance, contrast_structure = ssim_parts(x, y, data_range, kernel_size)
        return luminance * contrast_structure


def same_size_window(image_shape: Sequence[int]) -> int:
    """The window of a same-size SSIM map of images (..., H, W): 11 pixels, or the widest odd one that the
    mirrored border allows (under half the smaller side)."""
    return min(11, (min(image_shape[-2:]) - 1) // 2 * 2 + 1)


def ssim_loss(prediction: Tensor, target: Tensor, value_range: tuple[float, float]) -> Tensor:
    """(1 - SSIM) of each image pair (B, C, H, W) times its number of values, (B,) float32: the training
    loss of AE-SSIM (Bergmann et al., VISAPP 2019), on the scale of a summed squared error. SSIM is the mean
    of the same-size map (`ssim_map`, as torchmetrics' SSIM), so every pixel, the borders too, is the centre
    of a window and weighs the same, as in the anomaly map; it is not clipped (below 0 it still has a
    gradient, unlike `ms_ssim`'s)."""
    data_range = value_range[1] - value_range[0]
    similarity = ssim_map(prediction, target, data_range, same_size_window(target.shape))
    return (1 - similarity.flatten(1).mean(1)) * target[0].numel()
