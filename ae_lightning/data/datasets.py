"""A dataset over images already in memory, scaled to the model's value range as items are read."""

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ae_lightning.batch import Batch


class ImageTensorDataset(Dataset[Batch]):
    """Images held as uint8 (N, C, H, W) with labels (N,); item i is a `Batch` of one unbatched image (in
    `value_range`), its label and its index i.

    Keeping uint8 and scaling as items are read is 4x lighter than storing floats and skips torchvision's
    per-image PIL round trip. With `binarize`, each read draws a fresh binary image with pixel
    probabilities from the intensities (dynamic binarisation). Indexed by a tensor of B indices it gives a
    whole batch, ((B, C, H, W), (B,)), in a few tensor operations on whatever device it is kept on
    (`to`); indexed by a list of such tensors, a list of batches. With `is_anomaly` (N,) bool (the one-class
    protocol), items are (image, label, is_anomaly).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        value_range: tuple[float, float],
        binarize: bool = False,
        is_anomaly: Tensor | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        self.images = images
        self.labels = labels
        self.low, self.high = value_range
        self.binarize = binarize
        self.is_anomaly = is_anomaly

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str) -> "ImageTensorDataset":
        """Keeps images and labels on `device` (in place); returns self."""
        self.images, self.labels = self.images.to(device), self.labels.to(device)
        if self.is_anomaly is not None:
            self.is_anomaly = self.is_anomaly.to(device)
        return self

    def __getitem__(self, index: int | Tensor | list[Tensor]) -> Batch | list[Batch]:
        if isinstance(index, list):
            return [self[batch] for batch in index]
        if isinstance(index, Tensor):
            index = index.to(self.images.device, non_blocking=True)
        else:
            index = torch.tensor(index, device=self.images.device)
        x = self.images[index].float().div_(255)  # (C, H, W) or (B, C, H, W), in [0, 1]
        if self.binarize:
            x = torch.bernoulli(x)
        if (self.low, self.high) != (0.0, 1.0):
            x = x.mul_(self.high - self.low).add_(self.low)
        is_anomaly = None if self.is_anomaly is None else self.is_anomaly[index]
        return Batch(x, self.labels[index], is_anomaly, index)


def binarize_once(images: Tensor, seed: int) -> Tensor:
    """A fixed stochastic binarisation of uint8 images (values 0 or 255), the same for the same seed."""
    generator = torch.Generator().manual_seed(seed)
    thresholds = torch.rand(images.shape, generator=generator) * 255
    return (images.float() > thresholds).to(torch.uint8) * 255
