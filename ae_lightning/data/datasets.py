"""A dataset over images already in memory, scaled to the model's value range as items are read."""

import torch
from torch import Tensor
from torch.utils.data import Dataset


class ImageTensorDataset(Dataset[tuple[Tensor, Tensor]]):
    """Images held as uint8 (N, C, H, W) with labels (N,); item i is (image in `value_range`, label).

    Keeping uint8 and scaling per item is 4x lighter than storing floats and skips torchvision's
    per-image PIL round trip. With `binarize`, each read draws a fresh binary image with pixel
    probabilities from the intensities (dynamic binarisation).
    """

    def __init__(
        self, images: Tensor, labels: Tensor, value_range: tuple[float, float], binarize: bool = False
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        self.images = images
        self.labels = labels
        self.low, self.high = value_range
        self.binarize = binarize

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x = self.images[index].float().div_(255)  # (C, H, W) in [0, 1]
        if self.binarize:
            x = torch.bernoulli(x)
        if (self.low, self.high) != (0.0, 1.0):
            x = x.mul_(self.high - self.low).add_(self.low)
        return x, self.labels[index]


def binarize_once(images: Tensor, seed: int) -> Tensor:
    """A fixed stochastic binarisation of uint8 images (values 0 or 255), the same for the same seed."""
    generator = torch.Generator().manual_seed(seed)
    thresholds = torch.rand(images.shape, generator=generator) * 255
    return (images.float() > thresholds).to(torch.uint8) * 255
