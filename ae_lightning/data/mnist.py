"""LightningDataModule for the torchvision MNIST family: MNIST, Fashion-MNIST and KMNIST."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torchvision.datasets
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn

from ae_lightning.data.archives import extract_archives
from ae_lightning.data.base import (
    ImageDataModule,
    Split,
    check_normal_classes,
    held_out,
)
from ae_lightning.data.datasets import ImageTensorDataset, binarize_once
from ae_lightning.data.idx import check_split
from ae_lightning.errors import ConfigError, DataError
from ae_lightning.evaluation.feature_net import KNOWN_SHA256, KNOWN_TRAIN_SIZE, Features, load_or_train
from ae_lightning.files import folder_lock

DatasetName = Literal["MNIST", "FashionMNIST", "KMNIST"]
#: how binarised images are drawn: afresh at each training read, or once for every split
Binarization = Literal["dynamic", "static"]
#: every dataset of the family has these classes
NUM_CLASSES = 10


class MNISTDataModule(ImageDataModule):
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
        binarize: binarise the images, each pixel 1 with probability its intensity. `true` (or `dynamic`):
            training images are drawn afresh at every read (dynamic binarisation), validation and test images
            once, with a fixed seed, so their losses compare across epochs. `static`: every split drawn once,
            with a seed, and kept (the protocol of statically binarised MNIST, without Larochelle's fixed
            files). `false`: grey levels.
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
            batch then carries `gt_anomaly` = the label is not a normal class; the models log `test/auroc`,
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
        binarize: bool | Binarization = False,
        download: bool = True,
        resident: bool = True,
        steps_per_call: int = 1,
        normal_classes: Sequence[int] | None = None,
    ) -> None:
        if dataset not in ("MNIST", "FashionMNIST", "KMNIST"):
            raise ConfigError(f"dataset must be MNIST, FashionMNIST or KMNIST, got {dataset!r}")
        if binarize not in (False, True, "dynamic", "static"):
            raise ConfigError(f"binarize must be true, false, dynamic or static, got {binarize!r}")
        super().__init__(batch_size, num_workers, split_seed, value_range, resident, steps_per_call)
        if val_size < 1:
            raise ConfigError(f"val_size must be at least 1 image, got {val_size}")
        value_range = list(self.value_range)  # hparams hold lists, as YAML does
        normal_classes = check_normal_classes(normal_classes, NUM_CLASSES)
        self.save_hyperparameters()
        self.dataset_class: type[torchvision.datasets.MNIST] = getattr(torchvision.datasets, dataset)
        self.data_dir = Path(data_dir)
        self.image_shape = (1, 28, 28)

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
        # one process at a time per folder (nodes sharing it): the next finds the files the first fetched
        with folder_lock(self.data_dir, create=self.hparams.download):
            self._fetch(needed)

    def _fetch(self, needed: list[Path]) -> None:
        """Extracts, then downloads, what of `needed` is still missing."""
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

    def export_description(self) -> dict[str, Any]:
        """As the base's, and whether the images were binarised (an export then thresholds its pixels)."""
        return {**super().export_description(), "binarize": self.hparams.binarize}

    def describe(self) -> str:
        return str(self.hparams.dataset)

    @property
    def class_names(self) -> list[str]:
        return list(self.dataset_class.classes)

    def feature_network(self) -> nn.Module:
        """The classifier of this dataset whose features the samples' FID compares: trained once on the
        whole training file (a few seconds on a CPU core, deterministic) and cached in
        `<data_dir>/<dataset>/feature_classifier/`, checked by the SHA-256 of its weights when loaded."""
        train = self.dataset_class(str(self.data_dir), train=True)
        network, digest = load_or_train(
            self.data_dir / self.dataset_class.__name__ / "feature_classifier",
            self.hparams.dataset,
            train.data.unsqueeze(1),
            train.targets,
        )
        known = KNOWN_SHA256.get(self.hparams.dataset)
        if known is not None and digest != known and len(train.data) == KNOWN_TRAIN_SIZE:
            rank_zero_info(
                f"the {self.hparams.dataset} feature classifier trained here (SHA-256 {digest[:12]}...) is "
                f"not the documented one ({known[:12]}...; another build of torch?): test/fid compares with "
                "runs of this machine, not with docs/evaluation.md"
            )
        return Features(network)

    def load_splits(self) -> dict[Split, ImageTensorDataset]:
        """The seeded train/val split of the training file and the test file, as uint8 (N, 1, 28, 28)."""
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
        kept, held = held_out(len(train.data), val_size, self.hparams.split_seed)
        splits = {
            "train": (train.data[kept], train.targets[kept]),
            "val": (train.data[held], train.targets[held]),
            "test": (test.data, test.targets),
        }
        binarize = self.hparams.binarize
        dynamic = binarize is True or binarize == "dynamic"
        for seed, (split, (images, labels)) in enumerate(splits.items()):
            images = images.unsqueeze(1)  # (N, 28, 28) -> (N, 1, 28, 28)
            if binarize and not (dynamic and split == "train"):  # dynamic: training images at each read
                images = binarize_once(images, seed=self.hparams.split_seed + seed)
            splits[split] = (images, labels)
        return self.labelled_datasets(splits, self.hparams.normal_classes, dynamic)
