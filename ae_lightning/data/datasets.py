"""A dataset over uint8 images in memory or memory-mapped, scaled to the value range as items are read."""

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ae_lightning.batch import Batch
from ae_lightning.value_range import scale_pixels


class ImageTensorDataset(Dataset[Batch]):
    """Images held as uint8 (N, C, H, W) with labels (N,) (None: unlabelled); item i is a `Batch` of one
    unbatched image (in `value_range`), its label and its index i.

    Keeping uint8 and scaling as items are read is 4x lighter than storing floats and skips torchvision's
    per-image PIL round trip. With `binarize`, each read draws a fresh binary image with pixel
    probabilities from the intensities (dynamic binarisation). Indexed by a tensor of B indices it gives a
    whole batch, ((B, C, H, W), (B,)), in a few tensor operations on whatever device it is kept on
    (`to`); indexed by a list of such tensors, a list of batches. With `gt_anomaly` (N,) bool (the one-class
    protocol), items carry it too.

    With `rows` (N,) int64 the items are the rows `rows` of `images`, which may hold more (a memory-mapped
    array of a whole folder shared by its splits); only the rows a batch asks for are read. `paths` (N,)
    names the file of each item, for predictions.

    With `masks` (M, 1, H, W) uint8 (decoded ground-truth masks, possibly memory-mapped and shared by the
    splits) and `mask_rows` (N,) int64 (the row of `masks` of each item, -1: no mask, all False), items
    carry `gt_mask`, (H, W) or (B, H, W) bool: True where the mask's value is over 127.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor | None,
        value_range: tuple[float, float],
        binarize: bool = False,
        gt_anomaly: Tensor | None = None,
        rows: Tensor | None = None,
        paths: list[str] | None = None,
        masks: Tensor | None = None,
        mask_rows: Tensor | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if (masks is None) != (mask_rows is None):
            raise ValueError("masks and mask_rows come together")
        if masks is not None and (masks.dtype != torch.uint8 or masks.shape[1:] != (1, *images.shape[2:])):
            raise ValueError(f"masks must be uint8 (M, 1, H, W) like the images, got {tuple(masks.shape)}")
        self.images = images
        self.labels = labels
        self.low, self.high = value_range
        self.binarize = binarize
        self.gt_anomaly = gt_anomaly
        self.rows = rows
        self.paths = paths
        self.masks = masks
        self.mask_rows = mask_rows

    def __len__(self) -> int:
        return self.images.shape[0] if self.rows is None else len(self.rows)

    @property
    def nbytes(self) -> int:
        """The memory its images, labels and masks take once on a device."""
        size = len(self) * self.images[0].nbytes + (0 if self.labels is None else self.labels.nbytes)
        if self.masks is not None:
            size += int((self.mask_rows >= 0).sum()) * self.masks[0].nbytes + self.mask_rows.nbytes
        return size

    @property
    def device(self) -> torch.device:
        """Where the images are kept."""
        return self.images.device

    def to(self, device: torch.device | str) -> "ImageTensorDataset":
        """Keeps images, labels and masks on `device` (in place; only this dataset's rows); returns self."""
        if self.rows is not None and torch.device(device).type != "cpu":
            # row by row into the device's memory: no host copy of the whole split in every process
            self.images, self.rows = gather_rows(self.images, self.rows, device), None
        elif self.rows is not None:
            self.images, self.rows = self.images[self.rows], None
        self.images = self.images.to(device)
        if self.labels is not None:
            self.labels = self.labels.to(device)
        if self.gt_anomaly is not None:
            self.gt_anomaly = self.gt_anomaly.to(device)
        if self.masks is not None:
            present = self.mask_rows >= 0
            used, compact = self.mask_rows[present].unique(return_inverse=True)  # each mask once
            mask_rows = torch.full_like(self.mask_rows, -1)
            mask_rows[present] = compact
            self.masks, self.mask_rows = gather_rows(self.masks, used, device), mask_rows.to(device)
        return self

    def read_in_batches(self) -> "BatchReads":
        """The same data (shared, not copied), read a batch at a time by a DataLoader (`BatchReads`)."""
        reads = BatchReads.__new__(BatchReads)
        reads.__dict__.update(self.__dict__)
        return reads

    def __getitem__(self, index: int | Tensor | list[Tensor]) -> Batch | list[Batch]:
        if isinstance(index, list):
            return [self[batch] for batch in index]
        if isinstance(index, Tensor):
            index = index.to(self.images.device, non_blocking=True)
        else:
            index = torch.tensor(index, device=self.images.device)
        rows = index if self.rows is None else self.rows[index.cpu()]
        # (C, H, W) or (B, C, H, W) in the value range
        x = scale_pixels(self.images[rows], (self.low, self.high), "sample" if self.binarize else None)
        gt_anomaly = None if self.gt_anomaly is None else self.gt_anomaly[index]
        labels = None if self.labels is None else self.labels[index]
        return Batch(x, labels, gt_anomaly, index, gt_mask=self._gt_mask(index))

    def _gt_mask(self, index: Tensor) -> Tensor | None:
        """(H, W) or (B, H, W) bool for a 0-d or (B,) `index` (on the device of the data); None without
        masks."""
        if self.masks is None:
            return None
        mask_rows = self.mask_rows[index]
        if len(self.masks) == 0:  # a split of normal images only
            return torch.zeros(
                (*mask_rows.shape, *self.masks.shape[2:]), dtype=torch.bool, device=index.device
            )
        masks = self.masks[mask_rows.clamp(min=0)][..., 0, :, :] > 127
        return masks & (mask_rows >= 0)[..., None, None]


#: rows copied to a device at a time by `gather_rows` (64 MB)
GATHER_BYTES = 2**26


def gather_rows(images: Tensor, rows: Tensor, device: torch.device | str) -> Tensor:
    """`images[rows]` on `device`, copied a few rows at a time, so the host holds one chunk, not all."""
    gathered = torch.empty((len(rows), *images.shape[1:]), dtype=images.dtype, device=device)
    step = max(1, GATHER_BYTES // max(1, images[0].nbytes))
    for start in range(0, len(rows), step):
        gathered[start : start + step].copy_(images[rows[start : start + step]])
    return gathered


class BatchReads(ImageTensorDataset):
    """An `ImageTensorDataset` that a DataLoader with a batch sampler reads a whole batch at a time
    (`__getitems__`): one indexing of the tensors per batch, on their device, instead of one per image.
    Made by `ImageTensorDataset.read_in_batches`."""

    def __getitems__(self, indices: list[int]) -> Batch:
        return self[torch.tensor(indices, dtype=torch.long)]


def binarize_once(images: Tensor, seed: int) -> Tensor:
    """A fixed stochastic binarisation of uint8 images (values 0 or 255), the same for the same seed."""
    generator = torch.Generator().manual_seed(seed)
    thresholds = torch.rand(images.shape, generator=generator) * 255
    return (images.float() > thresholds).to(torch.uint8) * 255
