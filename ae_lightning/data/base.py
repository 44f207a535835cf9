"""The shared part of the image datamodules: uint8 splits served resident on the device or by a DataLoader,
with the same split, seed and DDP rules for every source of images (MNIST, CIFAR-10, a folder)."""

import math
from abc import abstractmethod
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from ae_lightning.batch import Batch
from ae_lightning.data.datasets import ImageTensorDataset
from ae_lightning.data.samplers import (
    ResidentBatches,
    ResumableLoader,
    TrainingOrder,
    resident_batches,
    shuffle_seed,
)
from ae_lightning.errors import ConfigError, DataError
from ae_lightning.multistep import check_steps_per_call
from ae_lightning.value_range import check_value_range

Split = Literal["train", "val", "test", "predict"]


class ImageDataModule(LightningDataModule):
    """Serves uint8 image splits (`load_splits`, written by each source) as `Batch`es.

    Training batches are this rank's share of a shuffle seeded by (seed, epoch), resumable mid-epoch;
    validation and test batches are in order, each rank a disjoint share, no image repeated; predict reads
    `predict` when the source has that split, else `test`, in order. With `resident` the splits are moved to
    the training device and batches are cut there by indexing (no DataLoader), when the device has room.

    Subclasses set `image_shape` (read by the CLI, which hands it to the model) and call
    `save_hyperparameters()`.
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
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        if num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
        check_steps_per_call(steps_per_call)
        if steps_per_call > 1 and not resident:
            raise ConfigError(
                f"steps_per_call {steps_per_call} needs resident data: drop --data.resident false, "
                "or train one step per call (steps_per_call 1)"
            )
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.split_seed = split_seed
        self.steps_per_call = steps_per_call
        #: read by the CLI, which hands it to the model
        self.value_range: tuple[float, float] = check_value_range(value_range)
        self.datasets: dict[Split, ImageTensorDataset] = {}
        self.resident = resident  # whether setup() could keep the data on the device

    @abstractmethod
    def load_splits(self) -> dict[Split, ImageTensorDataset]:
        """The `train`, `val` and `test` splits (and `predict`, where the source has one), on the CPU."""

    def describe(self) -> str:
        """The data's name in messages."""
        return type(self).__name__

    @property
    def class_names(self) -> list[str] | None:
        """The name of each class, indexed by label (None: unknown)."""
        return None

    def label_range(self) -> tuple[int, int] | None:
        """The smallest and largest class label of the loaded splits (None: no labels), read once at set-up
        (a conditional model checks them against its classes, so that no training step has to)."""
        labels = [dataset.labels for dataset in self.datasets.values() if dataset.labels is not None]
        labels = [split for split in labels if len(split)]
        if not labels:
            return None
        return min(int(split.min()) for split in labels), max(int(split.max()) for split in labels)

    def setup(self, stage: str) -> None:
        """Loads the splits (on every rank), kept on the device when asked and it has room."""
        if self.datasets:
            return
        self.datasets = self.load_splits()
        if self.resident:
            self._keep_on_device()

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
            is_anomaly, keep = normal_class_targets(labels, normal_classes, split)
            if keep is not None:
                images, labels, is_anomaly = images[keep], labels[keep], is_anomaly[keep]
            binarize = binarize_train and split == "train"
            datasets[split] = ImageTensorDataset(
                images, labels, self.value_range, binarize=binarize, is_anomaly=is_anomaly
            )
        return datasets

    def _keep_on_device(self) -> None:
        """Moves the splits to the training device when it has room for them: several times their size, for
        the float batches made from them and the model; 4x on a GPU, and in the main memory 2x for every
        process of this machine (under DDP each keeps its own copy, all at once)."""
        device = self._device()
        size = sum(dataset.nbytes for dataset in self.datasets.values())
        processes = 1 if device.type == "cuda" else self._processes_per_machine()
        needed = (4 if device.type == "cuda" else 2) * size * processes
        if free_memory(device) < needed:
            self.resident = False
            copies = f" x {processes} processes" if processes > 1 else ""
            rank_zero_warn(
                f"{self.describe()} ({size / 2**20:.0f} MB{copies}) does not fit beside the model on "
                f"{device}: reading it with a DataLoader instead (set --data.resident false to silence this)"
            )
            if self.steps_per_call > 1:
                raise ConfigError("steps_per_call > 1 needs the data on the device, which lacks the memory")
            return
        for dataset in self.datasets.values():
            dataset.to(device)

    def _processes_per_machine(self) -> int:
        """The processes of the run on this machine (1 outside a trainer)."""
        trainer = self.trainer
        return max(1, trainer.world_size // max(1, trainer.num_nodes)) if trainer is not None else 1

    def _loader(self, split: Split, predict: bool = False) -> DataLoader:
        # each new iterator draws a worker seed from this generator instead of the global stream, which
        # Lightning creates at other points of a resumed run than of an unbroken one
        generator = torch.Generator().manual_seed(self.split_seed)
        # training: a loader that checkpoints keep the place of, so a run resumes mid-epoch exactly
        loader_class = ResumableLoader if split == "train" and not predict else DataLoader
        if self.resident and predict:
            # on the device like test, a whole batch per read and no worker process (which cannot touch a
            # GPU); a batch sampler (Lightning's, in order, a disjoint share per rank) lets Lightning keep
            # the order of the predictions
            return DataLoader(
                self.datasets[split].read_in_batches(),
                batch_size=self.batch_size,
                collate_fn=Batch.collate,
                generator=generator,
            )
        if self.resident:
            # the sampler yields whole batches of indices; the dataset answers each with a batch
            return loader_class(
                self.datasets[split], batch_size=None, sampler=self._batches(split), generator=generator
            )
        return loader_class(
            self.datasets[split],
            batch_size=self.batch_size,
            collate_fn=Batch.collate,
            sampler=None if predict else self._sampler(split),
            generator=generator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # page-locked batches copy to a GPU while it works; not for a CPU run (pinning would start CUDA)
            pin_memory=self._device().type == "cuda",
        )

    def _device(self) -> torch.device:
        """The device the run trains on (the CPU outside a trainer)."""
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def _batches(self, split: Split) -> ResidentBatches:
        """The resident path's sampler: the same order and DDP shares as the DataLoader path's."""
        return resident_batches(
            self.datasets[split],
            self.trainer,
            self.batch_size,
            self.split_seed,
            train=split == "train",
            steps_per_call=self.steps_per_call,
            device=self.datasets[split].images.device,
        )

    def _sampler(self, split: Split) -> Sampler[int] | None:
        """Training: this rank's share of a shuffle seeded by (seed, epoch), so resuming gives the same order.
        Validation and test under DDP: each rank takes a disjoint share and no image is repeated to even the
        shares out, so the logged means are over the whole set exactly."""
        dataset = self.datasets[split]
        trainer = self.trainer
        if split == "train":
            world_size, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
            seed = shuffle_seed(self.split_seed)
            return TrainingOrder(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        if trainer is not None and trainer.world_size > 1 and split in ("val", "test"):
            return UnrepeatedDistributedSampler(
                dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
            )
        return None

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict" if "predict" in self.datasets else "test", predict=True)


def free_memory(device: torch.device) -> float:
    """Bytes free on `device`: a GPU's free memory, or the memory the system has available (MemAvailable on
    Linux: free plus reclaimable caches; elsewhere unknown, so infinite)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    return math.inf


def held_out(count: int, size: int, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded split of `count` items into (kept, held out) index tensors, `size` held out; the same seed
    gives the same split on every machine."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return order[size:], order[:size]


def normal_class_targets(
    labels: Tensor, normal_classes: Sequence[int] | None, split: Split
) -> tuple[Tensor | None, Tensor | None]:
    """The one-class protocol on a labelled split: (`is_anomaly` (N,) bool, or None without normal classes;
    the items to keep, or None for all). Training and validation keep the normal classes only (the
    anomalies are unseen until test); a split left without images, or a test split without anomalies, is
    an error."""
    if normal_classes is None:
        return None, None
    is_anomaly = ~torch.isin(labels, torch.tensor(list(normal_classes), dtype=labels.dtype))
    keep = None if split == "test" else ~is_anomaly
    left = is_anomaly if keep is None else is_anomaly[keep]
    if len(left) == 0 or (split == "test" and not left.any()):
        missing = "anomalies" if split == "test" else "images"
        raise DataError(f"normal_classes {list(normal_classes)} leave the {split} split without {missing}")
    return is_anomaly, keep


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
