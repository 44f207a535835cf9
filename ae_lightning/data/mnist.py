"""LightningDataModule for the torchvision MNIST family: MNIST, Fashion-MNIST and KMNIST."""

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torchvision.datasets
from lightning.pytorch import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Sampler

from ae_lightning.batch import Batch
from ae_lightning.data.archives import extract_archives
from ae_lightning.data.datasets import ImageTensorDataset, binarize_once
from ae_lightning.data.idx import check_split
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

DatasetName = Literal["MNIST", "FashionMNIST", "KMNIST"]
#: every dataset of the family has these classes
NUM_CLASSES = 10
Split = Literal["train", "val", "test"]


class MNISTDataModule(LightningDataModule):
    """MNIST, Fashion-MNIST or KMNIST (28x28 grayscale, 10 classes) from torchvision's files.

    A seeded train/val split of the 60000 training images; the 10000 test images are the test and predict set.

    Args:
        dataset: which dataset: `MNIST`, `FashionMNIST` or `KMNIST`.
        data_dir: folder that holds `<dataset>/raw/` with the four IDX files (`.gz` or extracted).
        batch_size: images per batch on each device: under DDP one optimisation step sees
            batch_size x devices x num_nodes images (the global batch).
        num_workers: DataLoader worker processes (0 reads in the main process).
        val_size: how many training images are held out for validation.
        split_seed: seed of the train/val split (the same seed gives the same split on every machine).
        value_range: range the pixels are scaled to, [-1, 1] or [0, 1].
        binarize: binarise the images: training images are drawn afresh at every read (dynamic binarisation),
            validation and test images once, with a fixed seed, so their losses compare across epochs.
        download: download missing files in `prepare_data`; false fails at once when files are missing.
        resident: keep the images (uint8, 47 MB for MNIST) on the training device and serve each batch by
            indexing them there: scaling, binarisation and shuffling run on the device, with no per-image
            Python and no DataLoader workers. Falls back to the DataLoader path, with a warning, when the
            device lacks the memory. false: a DataLoader reads image by image (with `num_workers`).
        steps_per_call: how many batches each training item holds (set by the CLI from the model's
            `steps_per_call`, so the model takes that many optimizer steps per call); needs `resident`.
        normal_classes: the one-class anomaly protocol: train and validate on these classes only (the
            train/val split of `val_size` is made first, then filtered, so about val_size x
            len(normal_classes) / 10 images validate), and test and predict on the whole test set. Every
            batch then carries `is_anomaly` = the label is not a normal class; the models log `test/auroc`,
            `test/aupr` and `test/f1` from it. None (default): all classes, no anomalies.
    """

    def __init__(
        self,
        dataset: DatasetName = "MNIST",
        data_dir: str | Path = "data",
        batch_size: int = 128,
        num_workers: int = 0,
        val_size: int = 5000,
        split_seed: int = 42,
        value_range: Sequence[float] = (0.0, 1.0),
        binarize: bool = False,
        download: bool = True,
        resident: bool = True,
        steps_per_call: int = 1,
        normal_classes: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if dataset not in ("MNIST", "FashionMNIST", "KMNIST"):
            raise ConfigError(f"dataset must be MNIST, FashionMNIST or KMNIST, got {dataset!r}")
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
        if val_size < 1:
            raise ConfigError(f"val_size must be at least 1 image, got {val_size}")
        value_range = list(check_value_range(value_range))  # hparams hold lists, as YAML does
        if normal_classes is not None:
            normal_classes = sorted({int(label) for label in normal_classes})
            if not normal_classes or not set(normal_classes) < set(range(NUM_CLASSES)):
                raise ConfigError(
                    f"normal_classes must be some, not all, of the classes 0..{NUM_CLASSES - 1} (the rest "
                    f"are the anomalies), got {normal_classes}"
                )
        self.save_hyperparameters()
        self.dataset_class: type[torchvision.datasets.MNIST] = getattr(torchvision.datasets, dataset)
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.num_workers = num_workers
        #: read by the CLI, which hands both to the model
        self.image_shape: tuple[int, int, int] = (1, 28, 28)
        self.value_range: tuple[float, float] = tuple(value_range)
        self.datasets: dict[Split, ImageTensorDataset] = {}
        self.resident = resident  # whether setup() could keep the data on the device

    @property
    def raw_folder(self) -> Path:
        """The folder torchvision reads the IDX files from: `<data_dir>/<dataset>/raw`."""
        return self.data_dir / self.dataset_class.__name__ / "raw"

    def _extracted_files(self, prefix: str) -> tuple[Path, Path]:
        """(images, labels) IDX files of the `train` or `t10k` split."""
        return (
            self.raw_folder / f"{prefix}-images-idx3-ubyte",
            self.raw_folder / f"{prefix}-labels-idx1-ubyte",
        )

    def prepare_data(self) -> None:
        """Extracts the `.gz` files in `raw_folder` whose extracted files are missing (checked by their
        content: a recompressed archive of valid IDX data is used, with a notice), then downloads what is
        still missing (unless `download` is off)."""
        needed = [*self._extracted_files("train"), *self._extracted_files("t10k")]
        if all(path.is_file() for path in needed):
            return
        recompressed = extract_archives(self.raw_folder, self.dataset_class.resources)
        if recompressed:
            rank_zero_info(
                f"{', '.join(recompressed)} in {self.raw_folder}: not byte for byte torchvision's archives "
                "(compressed again by a mirror or a distribution?), but they hold IDX data of the right "
                "shape: using them"
            )
        if all(path.is_file() for path in needed):
            return
        if not self.hparams.download:
            raise DataError(self._missing_files_message("download is off (--data.download false)"))
        try:
            for train in (True, False):
                self.dataset_class(str(self.data_dir), train=train, download=True)
        except (OSError, RuntimeError) as err:
            reason = " ".join(str(err).split())
            raise DataError(self._missing_files_message(f"the download failed: {reason}")) from err

    def _missing_files_message(self, reason: str) -> str:
        """What is missing, why it was not fetched, and where the files belong."""
        missing = [
            name
            for name, _ in self.dataset_class.resources
            if not (self.raw_folder / name).is_file()
            and not (self.raw_folder / name.removesuffix(".gz")).is_file()
        ]
        return (
            f"{self.hparams.dataset} files are missing from {self.raw_folder.resolve()} and {reason}. "
            f"Put {', '.join(missing)} in that folder (or point --data.data_dir at the folder that holds "
            f"{self.dataset_class.__name__}/raw/), then run again."
        )

    def setup(self, stage: str) -> None:
        """Loads the images as uint8 tensors and makes the seeded train/val split (every rank does this)."""
        if self.datasets:
            return
        for prefix in ("train", "t10k"):
            images, labels = self._extracted_files(prefix)
            if not (images.is_file() and labels.is_file()):
                raise DataError(self._missing_files_message("prepare_data did not provide them"))
            check_split(images, labels)
        train = self.dataset_class(str(self.data_dir), train=True)
        test = self.dataset_class(str(self.data_dir), train=False)
        val_size = self.hparams.val_size
        if val_size >= len(train.data):
            raise ConfigError(
                f"val_size {val_size} leaves no training images: the training file holds {len(train.data)}"
            )
        order = torch.randperm(
            len(train.data), generator=torch.Generator().manual_seed(self.hparams.split_seed)
        )
        splits = {
            "train": (train.data[order[val_size:]], train.targets[order[val_size:]]),
            "val": (train.data[order[:val_size]], train.targets[order[:val_size]]),
            "test": (test.data, test.targets),
        }
        normal_classes = self.hparams.normal_classes
        for seed, (split, (images, labels)) in enumerate(splits.items()):
            images = images.unsqueeze(1)  # (N, 28, 28) -> (N, 1, 28, 28)
            dynamic = self.hparams.binarize and split == "train"
            if self.hparams.binarize and split != "train":
                images = binarize_once(images, seed=self.hparams.split_seed + seed)
            is_anomaly = None
            if normal_classes is not None:
                is_anomaly = ~torch.isin(labels, torch.tensor(normal_classes, dtype=labels.dtype))
                if split != "test":  # the anomalies are unseen until test
                    normal = ~is_anomaly
                    images, labels, is_anomaly = images[normal], labels[normal], is_anomaly[normal]
                if len(labels) == 0 or (split == "test" and not is_anomaly.any()):
                    raise DataError(
                        f"normal_classes {normal_classes} leave the {split} split without "
                        f"{'anomalies' if split == 'test' else 'images'}"
                    )
            self.datasets[split] = ImageTensorDataset(
                images, labels, self.value_range, binarize=dynamic, is_anomaly=is_anomaly
            )
        if self.hparams.resident:
            self._keep_on_device()

    def _keep_on_device(self) -> None:
        """Moves the splits to the training device when it has room for them (several times their size,
        for the float batches made from them and the model)."""
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        size = sum(dataset.images.nbytes + dataset.labels.nbytes for dataset in self.datasets.values())
        if device.type == "cuda" and torch.cuda.mem_get_info(device)[0] < 4 * size:
            self.resident = False
            rank_zero_warn(
                f"{self.hparams.dataset} ({size / 2**20:.0f} MB) does not fit beside the model on {device}: "
                "reading it with a DataLoader instead (set --data.resident false to silence this)"
            )
            if self.hparams.steps_per_call > 1:
                raise ConfigError("steps_per_call > 1 needs the data on the device, which lacks the memory")
            return
        for dataset in self.datasets.values():
            dataset.to(device)

    def _loader(self, split: Split, predict: bool = False) -> DataLoader:
        # each new iterator draws a worker seed from this generator instead of the global stream, which
        # Lightning creates at other points of a resumed run than of an unbroken one
        generator = torch.Generator().manual_seed(self.hparams.split_seed)
        # training: a loader that checkpoints keep the place of, so a run resumes mid-epoch exactly
        loader_class = ResumableLoader if split == "train" and not predict else DataLoader
        if self.resident and not predict:
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
            pin_memory=torch.cuda.is_available() and not self.resident,
        )

    def _batches(self, split: Split) -> ResidentBatches:
        """The resident path's sampler: the same order and DDP shares as the DataLoader path's."""
        return resident_batches(
            self.datasets[split],
            self.trainer,
            self.batch_size,
            self.hparams.split_seed,
            train=split == "train",
            steps_per_call=self.hparams.steps_per_call,
        )

    def _sampler(self, split: Split) -> Sampler[int] | None:
        """Training: this rank's share of a shuffle seeded by (seed, epoch), so resuming gives the same order.
        Validation and test under DDP: each rank takes a disjoint share and no image is repeated to even the
        shares out, so the logged means are over the whole set exactly."""
        dataset = self.datasets[split]
        trainer = self.trainer
        if split == "train":
            world_size, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
            seed = shuffle_seed(self.hparams.split_seed)
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
        # image by image: Lightning wraps the sampler to keep the order of the predictions under DDP
        return self._loader("test", predict=True)
