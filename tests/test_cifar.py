"""CIFAR-10 from tiny batch files in its own pickled format: read without running code from them."""

import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ae_lightning.cli import main
from ae_lightning.data import CIFAR10DataModule
from ae_lightning.errors import DataError
from tests.conftest import CONFIGS, VAL_SIZE, tiny


def ready(data_dir: Path, **kwargs) -> CIFAR10DataModule:
    datamodule = CIFAR10DataModule(data_dir, val_size=VAL_SIZE, download=False, **kwargs)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def test_cifar_splits_hold_the_files_images_in_rgb_planes(data_dir: Path) -> None:
    datamodule = ready(data_dir)
    assert datamodule.image_shape == (3, 32, 32)
    sizes = {split: len(dataset) for split, dataset in datamodule.datasets.items()}
    assert sizes == {"train": 100 - VAL_SIZE, "val": VAL_SIZE, "test": 40}
    with open(data_dir / "cifar-10-batches-py" / "test_batch", "rb") as file:
        content = pickle.load(file, encoding="bytes")  # our own test file: trusted
    first = torch.from_numpy(content[b"data"][0].reshape(3, 32, 32)).float() / 255
    batch = datamodule.datasets["test"][torch.arange(2)]
    torch.testing.assert_close(batch.inputs[0], first)
    assert batch.labels.tolist() == content[b"labels"][:2]


def test_normal_classes_give_the_one_class_protocol(data_dir: Path) -> None:
    datamodule = ready(data_dir, normal_classes=[3])
    assert (datamodule.datasets["train"].labels == 3).all()
    test = datamodule.datasets["test"]
    assert torch.equal(test.gt_anomaly, test.labels != 3)


def test_a_crafted_batch_file_is_refused_and_never_runs(data_dir: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "data"
    shutil.copytree(data_dir / "cifar-10-batches-py", root / "cifar-10-batches-py")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (marker, "code ran"))

    with open(root / "cifar-10-batches-py" / "data_batch_3", "wb") as file:
        pickle.dump({b"data": Payload(), b"labels": []}, file, protocol=2)
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                "--config",
                str(CONFIGS / "cifar10.yaml"),
                *tiny(root),
                f"--trainer.default_root_dir={tmp_path}",
            ]
        )
    message = str(exit_info.value.code)
    assert "data_batch_3 is not a CIFAR-10 batch file" in message and "never holds" in message
    assert "\n" not in message
    assert not marker.exists()


def test_the_archive_is_extracted_offline_and_missing_files_are_one_clear_error(
    data_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "offline"
    root.mkdir()
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as archive:
        archive.add(data_dir / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    assert len(ready(root).datasets["test"]) == 40
    with pytest.raises(DataError, match=r"data_batch_1, .*test_batch\) are missing .*download is off"):
        CIFAR10DataModule(tmp_path / "empty", download=False).prepare_data()


def test_read_batch_takes_numpy_arrays_of_either_numpy_generation(tmp_path: Path) -> None:
    """Files pickled by numpy 1 name numpy.core.multiarray, by numpy 2 numpy._core.multiarray: both read."""
    from ae_lightning.data.cifar import read_batch

    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({b"data": data, b"labels": [1, 2]}, protocol=2))
    images, labels = read_batch(path)
    assert images.shape == (2, 3, 32, 32) and labels.tolist() == [1, 2]
    text = path.read_bytes()
    other = b"numpy.core.multiarray" if b"numpy._core.multiarray" in text else b"numpy._core.multiarray"
    renamed = text.replace(b"numpy._core.multiarray", other).replace(b"numpy.core.multiarray", other)
    path.write_bytes(renamed)
    assert torch.equal(read_batch(path)[0], images)
