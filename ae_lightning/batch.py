"""The one batch type: what every datamodule yields and every model, metric and callback reads by name."""

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


@dataclass
class Batch:
    """A batch of inputs with what the data knows about them (or, unbatched, one item of a dataset).

    Lightning moves a Batch to the device whole (it maps over dataclass fields). What the data knows is named
    apart from what a model decides (`gt_anomaly` here, `pred_anomaly` in predictions).

    Attributes:
        inputs: what a model reads: (B, C, H, W) images as floats in the data's value range, or (B, D)
            vectors (points in R^D).
        labels: (B,) integer class labels, when the data has them.
        gt_anomaly: (B,) bool, the true one-class label (True: not a normal class), in the one-class protocol.
        index: (B,) int64 position of each item in its dataset (predictions are written in that order).
        coordinates: (B, k) the true coordinates of points sampled on a k-dimensional manifold.
        gt_mask: (B, H, W) bool, the true defect pixels of each image (all False on a normal one), where the
            data set has masks (the one-class folder layout's `ground_truth/`).
    """

    inputs: Tensor
    labels: Tensor | None = None
    gt_anomaly: Tensor | None = None
    index: Tensor | None = None
    coordinates: Tensor | None = None
    gt_mask: Tensor | None = None

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Batch":
        """A copy on `device`; `dtype` converts the inputs only."""
        moved = {field.name: getattr(self, field.name) for field in fields(self)}
        moved = {name: None if value is None else value.to(device) for name, value in moved.items()}
        if dtype is not None:
            moved["inputs"] = moved["inputs"].to(dtype)
        return Batch(**moved)

    def pin_memory(self) -> "Batch":
        """A copy in page-locked memory (a DataLoader with `pin_memory` calls it), so that the copy to a GPU
        can overlap the work queued there."""
        held = {field.name: getattr(self, field.name) for field in fields(self)}
        return Batch(**{name: None if value is None else value.pin_memory() for name, value in held.items()})

    def with_inputs(self, inputs: Tensor) -> "Batch":
        """The same batch with other inputs (e.g. corrupted copies) of the same length."""
        return replace(self, inputs=inputs)

    @staticmethod
    def collate(items: "Sequence[Batch] | Batch") -> "Batch":
        """Stacks unbatched items into a batch (a DataLoader's `collate_fn`); a batch the dataset read whole
        (`__getitems__`) is passed on as it is."""
        if isinstance(items, Batch):
            return items
        joined = {}
        for field in fields(Batch):
            values = [getattr(item, field.name) for item in items]
            joined[field.name] = (
                None if values[0] is None else torch.stack([torch.as_tensor(v) for v in values])
            )
        return Batch(**joined)
