"""MNISTDataModule: splits, value ranges, binarisation, and clear errors for missing or damaged files."""

import gzip
import shutil
from pathlib import Path
from urllib.error import URLError

import pytest
import torch

from ae_lightning.data import MNISTDataModule
from ae_lightning.errors import ConfigError, DataError
from tests.conftest import NUM_TEST, NUM_TRAIN, VAL_SIZE, write_tiny_dataset

FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def ready(data_dir: Path, **kwargs) -> MNISTDataModule:
    datamodule = MNISTDataModule(data_dir=data_dir, val_size=VAL_SIZE, batch_size=16, **kwargs)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def all_items(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(images), torch.stack(labels)


@pytest.mark.parametrize("dataset", ["MNIST", "FashionMNIST", "KMNIST"])
def test_splits_sizes_and_shapes(data_dir: Path, dataset: str) -> None:
    datamodule = ready(data_dir, dataset=dataset)
    sizes = {split: len(ds) for split, ds in datamodule.datasets.items()}
    assert sizes == {"train": NUM_TRAIN - VAL_SIZE, "val": VAL_SIZE, "test": NUM_TEST}
    x, y = next(iter(datamodule.train_dataloader()))
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (16,) and int(y.max()) <= 9
    assert datamodule.image_shape == (1, 28, 28)


@pytest.mark.parametrize("value_range", [(0.0, 1.0), (-1.0, 1.0)])
def test_value_range(data_dir: Path, value_range) -> None:
    images, _ = all_items(ready(data_dir, value_range=value_range).datasets["test"])
    assert images.min().item() == pytest.approx(value_range[0], abs=0.02)
    assert images.max().item() == pytest.approx(value_range[1], abs=0.02)


def test_split_is_seeded_disjoint_and_complete(data_dir: Path) -> None:
    def split(seed: int) -> dict[str, torch.Tensor]:
        datamodule = ready(data_dir, split_seed=seed)
        return {name: all_items(datamodule.datasets[name])[0].flatten(1) for name in ("train", "val")}

    first, again, other = split(1), split(1), split(2)
    assert torch.equal(first["val"], again["val"]) and torch.equal(first["train"], again["train"])
    assert not torch.equal(first["val"], other["val"])
    # train and val together are the training file, each image once
    rows = {tuple(row.tolist()) for row in torch.cat([first["train"], first["val"]])}
    assert len(rows) == NUM_TRAIN


def test_binarize_draws_training_images_afresh_and_fixes_evaluation_images(data_dir: Path) -> None:
    datamodule = ready(data_dir, binarize=True)
    train = datamodule.datasets["train"]
    assert set(torch.unique(train[0][0]).tolist()) <= {0.0, 1.0}
    assert not torch.equal(all_items(train)[0], all_items(train)[0])  # dynamic binarisation
    val, val_again = all_items(datamodule.datasets["val"])[0], all_items(datamodule.datasets["val"])[0]
    assert set(torch.unique(val).tolist()) == {0.0, 1.0}
    assert torch.equal(val, val_again)
    torch.testing.assert_close(val, all_items(ready(data_dir, binarize=True).datasets["val"])[0])
    # a binarised pixel is 1 with the probability of its intensity
    grey = all_items(ready(data_dir).datasets["val"])[0]
    assert (val.mean() - grey.mean()).abs() < 0.01


def copy_dataset(data_dir: Path, tmp_path: Path) -> Path:
    shutil.copytree(data_dir / "MNIST", tmp_path / "MNIST")
    return tmp_path


def test_missing_files_without_download_name_the_files_and_the_folder(tmp_path: Path) -> None:
    datamodule = MNISTDataModule(data_dir=tmp_path / "nowhere", download=False)
    with pytest.raises(DataError) as error:
        datamodule.prepare_data()
    message = str(error.value)
    assert str((tmp_path / "nowhere" / "MNIST" / "raw").resolve()) in message
    for name in FILES:
        assert f"{name}.gz" in message
    assert "--data.data_dir" in message
    assert not (tmp_path / "nowhere").exists()  # nothing made up, nothing written


def test_failed_download_says_why_and_where_the_files_go(tmp_path: Path, monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr("torchvision.datasets.utils.urllib.request.urlopen", offline)
    with pytest.raises(DataError) as error:
        MNISTDataModule(data_dir=tmp_path).prepare_data()
    message = str(error.value)
    assert "download failed" in message and "Name or service not known" in message
    assert str((tmp_path / "MNIST" / "raw").resolve()) in message
    assert all(f"{name}.gz" in message for name in FILES)


def test_a_corrupt_gz_is_named(tmp_path: Path, monkeypatch) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"not the real file"))
    monkeypatch.setattr(
        "torchvision.datasets.utils.urllib.request.urlopen",
        lambda *a, **k: (_ for _ in ()).throw(URLError("x")),
    )
    with pytest.raises(DataError, match=r"corrupt \(checksum mismatch\).*train-images-idx3-ubyte\.gz"):
        MNISTDataModule(data_dir=tmp_path).prepare_data()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:5000]), "is truncated: its header announces 96x28x28"),
        (lambda p: p.write_bytes(p.read_bytes()[:10]), "is truncated: 10 bytes, too short"),
        (lambda p: p.write_bytes(p.read_bytes() + b"\0" * 7), "longer than its header says"),
        (lambda p: p.write_bytes(b"\x1f\x8b" + p.read_bytes()[2:]), "not an IDX file of 3-d unsigned bytes"),
    ],
    ids=["truncated", "header-only", "too-long", "wrong-magic"],
)
def test_damaged_files_give_a_clear_error(data_dir: Path, tmp_path: Path, damage, message) -> None:
    root = copy_dataset(data_dir, tmp_path)
    path = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    damage(path)
    with pytest.raises(DataError, match=message) as error:
        ready(root)
    assert str(path) in str(error.value) and "prepare the data again" in str(error.value)


def test_images_and_labels_of_different_lengths_are_refused(tmp_path: Path) -> None:
    root = write_tiny_dataset(tmp_path)
    other = write_tiny_dataset(tmp_path / "other")
    shutil.copy(
        other / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", root / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    )
    with pytest.raises(DataError, match=f"holds {NUM_TRAIN} images but .* holds {NUM_TEST} labels"):
        ready(root)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"num_workers": -1}, "num_workers must be >= 0"),
        ({"val_size": 0}, "val_size must be at least 1"),
        ({"value_range": (0, 255)}, "value_range must be"),
        ({"dataset": "CIFAR10"}, "dataset must be MNIST, FashionMNIST or KMNIST"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        MNISTDataModule(**kwargs)


def test_a_validation_set_as_large_as_the_training_file_is_refused(data_dir: Path) -> None:
    datamodule = MNISTDataModule(data_dir=data_dir, val_size=NUM_TRAIN)
    with pytest.raises(ConfigError, match=f"leaves no training images: the training file holds {NUM_TRAIN}"):
        datamodule.setup("fit")
