"""LightningDataModule for CIFAR-10 (32x32 RGB, 10 classes), read from torchvision's files without running
code from them."""

import codecs
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torchvision.datasets
from torch import Tensor
from torchvision.datasets.utils import extract_archive

from ae_lightning.data.base import (
    ImageDataModule,
    Split,
    check_normal_classes,
    held_out,
)
from ae_lightning.data.datasets import ImageTensorDataset
from ae_lightning.errors import ConfigError, DataError
from ae_lightning.files import folder_lock

NUM_CLASSES = 10
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FOLDER = torchvision.datasets.CIFAR10.base_folder  # cifar-10-batches-py
ARCHIVE = torchvision.datasets.CIFAR10.filename  # cifar-10-python.tar.gz
TRAIN_FILES = [name for name, _ in torchvision.datasets.CIFAR10.train_list]
TEST_FILES = [name for name, _ in torchvision.datasets.CIFAR10.test_list]


class _ArraysOnly(pickle.Unpickler):
    """Unpickles the dicts of numpy arrays, lists and bytes CIFAR's batch files hold, and nothing else: a
    file that names any other callable (a crafted one that would run code) is refused."""

    # numpy's own reconstruction function, whatever module numpy 1 or 2 keeps it in
    _allowed: ClassVar[dict[str, Any]] = {
        "_reconstruct": np.ndarray.__reduce__(np.zeros(1))[0],
        "ndarray": np.ndarray,
        "dtype": np.dtype,
    }

    def find_class(self, module: str, name: str) -> Any:
        if module.split(".")[0] == "numpy" and name in self._allowed:
            return self._allowed[name]
        if (module, name) == ("_codecs", "encode"):  # how protocol 2 spells bytes when Python 3 wrote it
            return codecs.encode
        raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR batch file never holds")


def read_batch(path: Path) -> tuple[Tensor, Tensor]:
    """One CIFAR-10 batch file: images uint8 (N, 3, 32, 32) and labels int64 (N,)."""
    try:
        with open(path, "rb") as file:
            content = _ArraysOnly(file, encoding="bytes").load()
        data = np.asarray(content[b"data"], dtype=np.uint8)
        labels = np.asarray(content[b"labels"], dtype=np.int64)
        images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as err:
        raise DataError(
            f"{path} is not a CIFAR-10 batch file ({' '.join(str(err).split())}): delete it and extract "
            f"{ARCHIVE} again (or let --data.download true fetch it)"
        ) from None
    if len(labels) != len(images) or labels.min(initial=0) < 0 or labels.max(initial=0) >= NUM_CLASSES:
        raise DataError(f"{path} holds {len(images)} images but {len(labels)} labels in 0..9: it is damaged")
    return images, torch.from_numpy(labels)


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 (32x32 RGB, 10 classes) from torchvision's files: a seeded train/val split of the 50000
    training images; the 10000 test images are the test and predict set.

    The batch files are Python pickles; they are read by an unpickler that takes numpy arrays and plain
    data only, so a crafted file cannot run code.

    Args:
        data_dir: folder holding `cifar-10-batches-py/` (extracted) or `cifar-10-python.tar.gz`.
        download: download the archive in `prepare_data` when neither is there; false fails at once.
        val_size: how many training images are held out for validation.
        normal_classes: the one-class anomaly protocol, as in `MNISTDataModule` (0 airplane, 1 automobile,
            2 bird, 3 cat, 4 deer, 5 dog, 6 frog, 7 horse, 8 ship, 9 truck).
        batch_size, num_workers, split_seed, value_range, resident, steps_per_call: as in
            `MNISTDataModule`.
    """

    def __init__(
        self,
        data_dir: str | Path = "data",
        batch_size: int = 128,
        num_workers: int = 0,
        val_size: int = 5000,
        split_seed: int = 42,
        value_range: Sequence[float] = (0.0, 1.0),
        download: bool = True,
        resident: bool = True,
        steps_per_call: int = 1,
        normal_classes: Sequence[int] | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers, split_seed, value_range, resident, steps_per_call)
        if val_size < 1:
            raise ConfigError(f"val_size must be at least 1 image, got {val_size}")
        value_range = list(self.value_range)  # hparams hold lists, as YAML does
        normal_classes = check_normal_classes(normal_classes, NUM_CLASSES)
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.image_shape = (3, 32, 32)

    @property
    def folder(self) -> Path:
        return self.data_dir / FOLDER

    def describe(self) -> str:
        return "CIFAR-10"

    @property
    def class_names(self) -> list[str]:
        return list(CLASS_NAMES)

    def _missing(self) -> list[str]:
        return [name for name in (*TRAIN_FILES, *TEST_FILES) if not (self.folder / name).is_file()]

    def prepare_data(self) -> None:
        """Extracts `cifar-10-python.tar.gz` when the batch files are missing, downloading it first unless
        `download` is off."""
        if not self._missing():
            return
        # one process at a time per folder (nodes sharing it): the next finds the files the first fetched
        with folder_lock(self.data_dir, create=self.hparams.download):
            if self._missing():
                self._fetch()

    def _fetch(self) -> None:
        """Extracts the archive, downloading it first where it is missing."""
        archive = self.data_dir / ARCHIVE
        try:
            if not archive.is_file():
                if not self.hparams.download:
                    raise DataError(self._missing_message("download is off (--data.download false)"))
                torchvision.datasets.CIFAR10(str(self.data_dir), train=True, download=True)
            else:
                extract_archive(str(archive), str(self.data_dir))
        except (OSError, RuntimeError, EOFError) as err:
            if isinstance(err, DataError):
                raise
            reason = " ".join(str(err).split())
            raise DataError(self._missing_message(f"fetching or extracting them failed: {reason}")) from err

    def _missing_message(self, reason: str) -> str:
        return (
            f"CIFAR-10 files ({', '.join(self._missing())}) are missing from {self.folder.resolve()} and "
            f"{reason}. Put {ARCHIVE} in {self.data_dir.resolve()} (or its extracted {FOLDER}/), or point "
            "--data.data_dir at the folder that holds it, then run again."
        )

    def load_splits(self) -> dict[Split, ImageTensorDataset]:
        if self._missing():
            raise DataError(self._missing_message("prepare_data did not provide them"))
        parts = [read_batch(self.folder / name) for name in TRAIN_FILES]
        train_images, train_labels = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        val_size = self.hparams.val_size
        if val_size >= len(train_images):
            raise ConfigError(f"val_size {val_size} leaves no training images of {len(train_images)}")
        kept, held = held_out(len(train_images), val_size, self.split_seed)
        test_images, test_labels = read_batch(self.folder / TEST_FILES[0])
        splits = {
            "train": (train_images[kept], train_labels[kept]),
            "val": (train_images[held], train_labels[held]),
            "test": (test_images, test_labels),
        }
        return self.labelled_datasets(splits, self.hparams.normal_classes)
