"""What every datamodule of the package is: the contract the framework reads, and the loaders it shares.

A datamodule derives from `AutoencoderDataModule` and says what its data is (`image_shape`, `value_range`,
`load_splits`, and where it has them `class_names`, `export_description` and `sample_names`); the base
serves the splits as `Batch`es, resident on the training device or through a DataLoader, with the same split,
seed, DDP and resume rules for every source. The CLI, `export` and the callbacks ask these methods, never a
concrete class or its splits.
"""

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler

from ae_lightning.batch import Batch
from ae_lightning.data.samplers import (
    ResidentBatches,
    ResumableLoader,
    TrainingOrder,
    resident_batches,
    shuffle_seed,
)
from ae_lightning.errors import ConfigError
from ae_lightning.multistep import check_steps_per_call

Split = Literal["train", "val", "test", "predict"]


class SplitDataset(Protocol):
    """What a split's dataset answers: item i as an unbatched `Batch`, a tensor of B indices as a whole
    batch (on whatever device it is kept on), a list of such tensors as a list of batches."""

    #: (N,) class labels, or None: unlabelled
    labels: Tensor | None

    def __len__(self) -> int: ...

    def __getitem__(self, index: Any) -> Any: ...

    @property
    def nbytes(self) -> int:
        """The memory it takes once on a device."""

    @property
    def device(self) -> torch.device:
        """Where its data is kept."""

    def to(self, device: torch.device | str) -> Any:
        """Keeps the data on `device` (in place); returns self."""

    def read_in_batches(self) -> Any:
        """The same data read a batch at a time by a DataLoader with a batch sampler (`__getitems__`)."""


class AutoencoderDataModule(LightningDataModule, ABC):
    """The base of every datamodule: declares what the framework reads and serves the splits as `Batch`es.

    A subclass sets `image_shape` and `value_range` (the CLI builds the model for them), writes
    `load_splits`, and calls `save_hyperparameters()`. Training batches are this rank's share of a shuffle
    seeded by (seed, epoch), resumable mid-epoch; validation and test batches are in order, each rank a
    disjoint share, no item repeated; predict reads `predict` when the source has that split, else `test`,
    in order. With `resident` the splits are moved to the training device and batches are cut there by
    indexing (no DataLoader), when the device has room.

    Args:
        batch_size: items per batch on each device (under DDP the global batch is batch_size x devices).
        num_workers: DataLoader worker processes when the data is not resident.
        split_seed: seed of the held-out splits and of the training order.
        resident: keep the splits on the training device when it has room.
        steps_per_call: batches per training item (set by the CLI from the model); needs `resident`.
    """

    #: the shape of one input: (C, H, W) of an image or (D,) of a vector; the CLI builds the model for it
    image_shape: tuple[int, ...]
    #: the range of the inputs; the CLI hands it to the model
    value_range: tuple[float, float]

    def __init__(
        self, batch_size: int, num_workers: int, split_seed: int, resident: bool, steps_per_call: int
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
        self.resident = resident  # whether setup() could keep the data on the device
        #: the loaded splits (after `setup`), by name
        self.datasets: dict[Split, SplitDataset] = {}

    # --- what a datamodule says about its data ---

    @abstractmethod
    def load_splits(self) -> dict[Split, SplitDataset]:
        """The `train`, `val` and `test` splits (and `predict`, where the source has one), on the CPU."""

    def describe(self) -> str:
        """The data's name in messages."""
        return type(self).__name__

    @property
    def class_names(self) -> list[str] | None:
        """The name of each class, indexed by label (None: unknown)."""
        return None

    def export_description(self) -> dict[str, Any]:
        """What `export` writes into `model.json` about the data (a subclass adds what it knows)."""
        return {"datamodule": type(self).__name__, "class_names": self.class_names}

    def label_range(self) -> tuple[int, int] | None:
        """The smallest and largest class label of the splits (None: no labels), read once at set-up (a
        conditional model checks them against its classes, so that no training step has to)."""
        labels = [split.labels for split in self.datasets.values() if split.labels is not None]
        labels = [split for split in labels if len(split)]
        if not labels:
            return None
        return min(int(split.min()) for split in labels), max(int(split.max()) for split in labels)

    def feature_network(self) -> nn.Module | None:
        """The framework's feature network of this data's images in [0, 1], for the samples' FID; or None."""
        return None

    def sample_names(self) -> list[str] | None:
        """The file of each item of the predicted split, by index (None: the items are not files)."""
        return None

    def split_size(self, split: Split) -> int:
        """How many items `split` holds (after set-up)."""
        return len(self.datasets[split])

    @torch.no_grad()
    def ordered_batches(self, split: Split, batch_size: int, device: torch.device) -> Iterator[Batch]:
        """The items of `split` in order, `batch_size` at a time, on `device` (set up first where needed):
        for whoever needs a whole split outside the loops (the training codes of a linear probe)."""
        if split not in self.datasets:
            self.setup("fit")
        dataset = self.datasets[split]
        for start in range(0, len(dataset), batch_size):
            yield dataset[torch.arange(start, min(start + batch_size, len(dataset)))].to(device)

    # --- what the framework does with it ---

    def setup(self, stage: str) -> None:
        """Loads the splits (on every rank), kept on the device when asked and it has room."""
        if self.datasets:
            return
        self.datasets = self.load_splits()
        if self.resident:
            self._keep_on_device()

    def _device(self) -> torch.device:
        """The device the run trains on (the CPU outside a trainer)."""
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def _processes_per_machine(self) -> int:
        """The processes of the run on this machine (1 outside a trainer)."""
        trainer = self.trainer
        return max(1, trainer.world_size // max(1, trainer.num_nodes)) if trainer is not None else 1

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

    def _loader(self, split: Split, predict: bool = False) -> DataLoader:
        # each new iterator draws a worker seed from this generator instead of the global stream, which
        # Lightning creates at other points of a resumed run than of an unbroken one
        generator = torch.Generator().manual_seed(self.split_seed)
        dataset = self.datasets[split]
        # training: a loader that checkpoints keep the place of, so a run resumes mid-epoch exactly
        loader_class = ResumableLoader if split == "train" and not predict else DataLoader
        if self.resident and predict:
            # on the device like test, a whole batch per read and no worker process (which cannot touch a
            # GPU); a batch sampler (Lightning's, in order, a disjoint share per rank) lets Lightning keep
            # the order of the predictions
            return DataLoader(
                dataset.read_in_batches(),
                batch_size=self.batch_size,
                collate_fn=Batch.collate,
                generator=generator,
            )
        if self.resident:
            # the sampler yields whole batches of indices; the dataset answers each with a batch
            return loader_class(dataset, batch_size=None, sampler=self._batches(split), generator=generator)
        return loader_class(
            dataset,
            batch_size=self.batch_size,
            collate_fn=Batch.collate,
            sampler=None if predict else self._sampler(split),
            generator=generator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # page-locked batches copy to a GPU while it works; not for a CPU run (pinning would start CUDA)
            pin_memory=self._device().type == "cuda",
        )

    def _batches(self, split: Split) -> ResidentBatches:
        """The resident path's sampler: the same order and DDP shares as the DataLoader path's, its indices on
        the device of the data."""
        dataset = self.datasets[split]
        return resident_batches(
            dataset,
            self.trainer,
            self.batch_size,
            self.split_seed,
            train=split == "train",
            steps_per_call=self.steps_per_call,
            device=dataset.device,
        )

    def _sampler(self, split: Split) -> Sampler[int] | None:
        """Training: this rank's share of a shuffle seeded by (seed, epoch), so resuming gives the same order.
        Validation and test under DDP: each rank takes a disjoint share and no item is repeated to even the
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
        return self._loader(self.predict_split(), predict=True)

    def predict_split(self) -> Split:
        """The split `predict` reads: `predict` where the source has one, else `test`."""
        return "predict" if "predict" in self.datasets else "test"


class KnownManifold(ABC):
    """A capability of a datamodule: its points lie on a known manifold, whose true coordinates each batch
    carries (`Batch.coordinates`); the projection report (`callbacks.ManifoldReport`) reads it."""

    #: the manifold (`data.manifold.Manifold`): its points, distances and pictures
    manifold: Any

    @property
    @abstractmethod
    def noise_std(self) -> float:
        """The standard deviation of the noise added to the points, in data units."""


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
