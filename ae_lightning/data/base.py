"""The shared part of the image datamodules: uint8 splits (MNIST, CIFAR-10, a folder), the seeded held-out
split and the one-class protocol, on the package's datamodule contract (`contract.AutoencoderDataModule`)."""

from collections.abc import Sequence

import torch
from torch import Tensor

from ae_lightning.data.contract import AutoencoderDataModule, Split
from ae_lightning.data.datasets import ImageTensorDataset
from ae_lightning.errors import ConfigError, DataError
from ae_lightning.value_range import check_value_range


class ImageDataModule(AutoencoderDataModule):
    """Serves uint8 image splits (`load_splits`, written by each source) as `Batch`es, scaled to
    `value_range` as they are read (`ImageTensorDataset`), with the loaders, checks and rules of
    `AutoencoderDataModule`.

    Subclasses set `image_shape` (C, H, W) and call `save_hyperparameters()`.
    """

    #: (C, H, W) of the images; the CLI builds the model for it
    image_shape: tuple[int, int, int]

    def __init__(
        self,
        batch_size: int,
        num_workers: int,
        split_seed: int,
        value_range: Sequence[float],
        resident: bool,
        steps_per_call: int,
    ) -> None:
        super().__init__(batch_size, num_workers, split_seed, resident, steps_per_call)
        #: read by the CLI, which hands it to the model
        self.value_range: tuple[float, float] = check_value_range(value_range)

    def labelled_datasets(
        self,
        splits: dict[Split, tuple[Tensor, Tensor]],
        normal_classes: Sequence[int] | None,
        binarize_train: bool = False,
    ) -> dict[Split, ImageTensorDataset]:
        """The datasets of (uint8 images, labels) splits; with `normal_classes`, in the one-class protocol
        (`normal_class_targets`). `binarize_train`: the training images are binarised afresh at each read."""
        datasets: dict[Split, ImageTensorDataset] = {}
        for split, (images, labels) in splits.items():
            gt_anomaly, keep = normal_class_targets(labels, normal_classes, split)
            if keep is not None:
                images, labels, gt_anomaly = images[keep], labels[keep], gt_anomaly[keep]
            binarize = binarize_train and split == "train"
            datasets[split] = ImageTensorDataset(
                images, labels, self.value_range, binarize=binarize, gt_anomaly=gt_anomaly
            )
        return datasets


def held_out(count: int, size: int, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded split of `count` items into (kept, held out) index tensors, `size` held out; the same seed
    gives the same split on every machine."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return order[size:], order[:size]


def normal_class_targets(
    labels: Tensor, normal_classes: Sequence[int] | None, split: Split
) -> tuple[Tensor | None, Tensor | None]:
    """The one-class protocol on a labelled split: (`gt_anomaly` (N,) bool, or None without normal classes;
    the items to keep, or None for all). Training and validation keep the normal classes only (the
    anomalies are unseen until test); a split left without images, or a test split without anomalies, is
    an error."""
    if normal_classes is None:
        return None, None
    gt_anomaly = ~torch.isin(labels, torch.tensor(list(normal_classes), dtype=labels.dtype))
    keep = None if split == "test" else ~gt_anomaly
    left = gt_anomaly if keep is None else gt_anomaly[keep]
    if len(left) == 0 or (split == "test" and not left.any()):
        missing = "anomalies" if split == "test" else "images"
        raise DataError(f"normal_classes {list(normal_classes)} leave the {split} split without {missing}")
    return gt_anomaly, keep


def check_normal_classes(normal_classes: Sequence[int] | None, num_classes: int) -> list[int] | None:
    """The normal classes, sorted and unique: some, not all, of 0..num_classes-1."""
    if normal_classes is None:
        return None
    normal = sorted({int(label) for label in normal_classes})
    if not normal or not set(normal) < set(range(num_classes)):
        raise ConfigError(
            f"normal_classes must be some, not all, of the classes 0..{num_classes - 1} (the rest "
            f"are the anomalies), got {normal}"
        )
    return normal
