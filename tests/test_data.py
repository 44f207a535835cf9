"""MNISTDataModule: splits, value ranges, binarisation, and clear errors for missing or damaged files."""

import gzip
import hashlib
import os
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
    items = [dataset[i] for i in range(len(dataset))]  # item by item, as the DataLoader path reads them
    return torch.stack([item.inputs for item in items]), torch.stack([item.labels for item in items])


@pytest.mark.parametrize("dataset", ["MNIST", "FashionMNIST", "KMNIST"])
def test_splits_sizes_and_shapes(data_dir: Path, dataset: str) -> None:
    datamodule = ready(data_dir, dataset=dataset)
    sizes = {split: len(ds) for split, ds in datamodule.datasets.items()}
    assert sizes == {"train": NUM_TRAIN - VAL_SIZE, "val": VAL_SIZE, "test": NUM_TEST}
    batch = next(iter(datamodule.train_dataloader()))
    x, y = batch.inputs, batch.labels
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (16,) and int(y.max()) <= 9
    assert batch.index.shape == (16,) and batch.gt_anomaly is None
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
    assert set(torch.unique(train[0].inputs).tolist()) <= {0.0, 1.0}
    assert not torch.equal(all_items(train)[0], all_items(train)[0])  # dynamic binarisation
    val, val_again = all_items(datamodule.datasets["val"])[0], all_items(datamodule.datasets["val"])[0]
    assert set(torch.unique(val).tolist()) == {0.0, 1.0}
    assert torch.equal(val, val_again)
    torch.testing.assert_close(val, all_items(ready(data_dir, binarize=True).datasets["val"])[0])
    # a binarised pixel is 1 with the probability of its intensity
    grey = all_items(ready(data_dir).datasets["val"])[0]
    assert (val.mean() - grey.mean()).abs() < 0.01


def test_static_binarization_draws_every_split_once_and_keeps_it(data_dir: Path, capsys) -> None:
    from ae_lightning.cli import main
    from tests.conftest import CONFIGS

    with pytest.raises(SystemExit):  # the option as a user gives it
        main(
            [
                "fit",
                "--config",
                str(CONFIGS / "vae_bernoulli.yaml"),
                "--data.binarize",
                "static",
                "--print_config",
            ]
        )
    assert "binarize: static" in capsys.readouterr().out
    datamodule = ready(data_dir, binarize="static")
    train = datamodule.datasets["train"]
    first = all_items(train)[0]
    assert set(torch.unique(first).tolist()) == {0.0, 1.0}
    assert torch.equal(first, all_items(train)[0])  # one draw, kept
    assert torch.equal(first, all_items(ready(data_dir, binarize="static").datasets["train"])[0])  # seeded
    # the evaluation splits are those of dynamic binarisation
    torch.testing.assert_close(all_items(datamodule.datasets["test"])[0],
                               all_items(ready(data_dir, binarize=True).datasets["test"])[0])  # fmt: skip
    with pytest.raises(ConfigError, match="binarize must be true, false, dynamic or static"):
        MNISTDataModule(data_dir=data_dir, binarize="sometimes")


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


def archives_only(data_dir: Path, tmp_path: Path, level: int = 9) -> Path:
    """A data folder holding only the four `.gz` archives of the tiny dataset (as distributed)."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FILES:
        data = (data_dir / "MNIST" / "raw" / name).read_bytes()
        (raw / f"{name}.gz").write_bytes(gzip.compress(data, compresslevel=level, mtime=0))
    return tmp_path


def test_the_archives_alone_with_download_off_are_extracted_and_read(
    data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The offline recipe: the four .gz files, --data.download false. Archives whose bytes are not
    torchvision's (these are compressed here) but that hold valid IDX data are used, with one notice."""
    root = archives_only(data_dir, tmp_path)
    with caplog.at_level("INFO"):
        datamodule = ready(root, download=False)
    for name in FILES:
        assert (root / "MNIST" / "raw" / name).read_bytes() == (
            data_dir / "MNIST" / "raw" / name
        ).read_bytes()
    assert torch.equal(datamodule.datasets["test"].labels, ready(data_dir).datasets["test"].labels)
    notices = [record.getMessage() for record in caplog.records if "not byte for byte" in record.getMessage()]
    assert notices == [
        f"{', '.join(f'{name}.gz' for name in FILES)} in {root / 'MNIST' / 'raw'}: not byte for byte "
        "torchvision's archives (compressed again by a mirror or a distribution?), but they hold IDX data of "
        "the right shape: using them"
    ]


def test_archives_with_torchvisions_bytes_are_extracted_without_a_notice(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root = archives_only(data_dir, tmp_path)
    raw = root / "MNIST" / "raw"
    # the checksums torchvision would know for these very archives
    resources = [(f"{name}.gz", hashlib.md5((raw / f"{name}.gz").read_bytes()).hexdigest()) for name in FILES]
    monkeypatch.setattr(MNISTDataModule(data_dir=root).dataset_class, "resources", resources)
    with caplog.at_level("INFO"):
        ready(root, download=False)
    assert not [record for record in caplog.records if "not byte for byte" in record.getMessage()]


@pytest.mark.parametrize(
    "content, message",
    [
        (lambda data: gzip.compress(data)[:-100], "is not a readable gzip archive"),  # cut
        (lambda data: b"PK" + data[:100], "is not a readable gzip archive"),  # not gzip at all
        (lambda data: gzip.compress(b"not the real file"), "is not an IDX file of 3-d unsigned bytes"),
        (lambda data: gzip.compress(data[:5000]), r"is truncated: its header announces 96x28x28"),
    ],
    ids=["cut", "not-gzip", "not-idx", "truncated-content"],
)
def test_a_damaged_archive_is_named_with_what_to_do(
    content, message: str, data_dir: Path, tmp_path: Path
) -> None:
    root = archives_only(data_dir, tmp_path)
    archive = root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    archive.write_bytes(content((data_dir / "MNIST" / "raw" / "train-images-idx3-ubyte").read_bytes()))
    with pytest.raises(DataError, match=message) as error:
        ready(root, download=False)
    assert str(archive) in str(error.value)
    assert "replace train-images-idx3-ubyte.gz with the original archive" in str(error.value)
    assert not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()  # nothing half-extracted


def test_missing_files_are_named_but_not_those_that_are_there(data_dir: Path, tmp_path: Path) -> None:
    root = archives_only(data_dir, tmp_path)
    (root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as error:
        ready(root, download=False)
    assert "Put t10k-labels-idx1-ubyte.gz in that folder" in str(error.value)


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


def test_a_batch_is_the_same_whether_collated_item_by_item_or_indexed_whole(data_dir: Path) -> None:
    """The DataLoader path collates items, the resident path indexes the dataset with a tensor: one Batch."""
    from ae_lightning.batch import Batch

    dataset = ready(data_dir, normal_classes=[3, 5]).datasets["test"]
    rows = torch.tensor([4, 0, 17, 9])
    whole, collated = dataset[rows], Batch.collate([dataset[int(i)] for i in rows])
    for name in ("inputs", "labels", "gt_anomaly", "index"):
        assert torch.equal(getattr(whole, name), getattr(collated, name)), name
    assert torch.equal(whole.index, rows) and len(whole) == 4
    moved = whole.to("cpu", torch.float64)
    assert moved.inputs.dtype == torch.float64 and moved.labels.dtype == whole.labels.dtype  # images only


#: a process that prepares MNIST in a folder with a stand-in download (slow, logged) and then reads it
_PREPARE = """
import os, sys, time
from pathlib import Path
import torchvision
from tests.conftest import write_tiny_dataset

def download(self):
    if self._check_exists():
        return
    with open(sys.argv[2], "a") as log:
        log.write(f"download by {os.getpid()}\\n")
    time.sleep(1.5)
    write_tiny_dataset(Path(sys.argv[1]))

torchvision.datasets.MNIST.download = download
from ae_lightning.data import MNISTDataModule

MNISTDataModule(data_dir=sys.argv[1], val_size=24).prepare_data()
datamodule = MNISTDataModule(data_dir=sys.argv[1], val_size=24)
datamodule.setup("fit")
print("read", len(datamodule.datasets["train"]))
"""


@pytest.mark.slow
def test_two_processes_preparing_one_shared_folder_download_once(tmp_path: Path) -> None:
    """Every node's prepare_data of a multi-node run may fetch into one shared data folder at once: a lock
    on the folder lets one download while the other waits, then finds the files."""
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    log = tmp_path / "downloads.log"
    command = [sys.executable, "-c", _PREPARE, str(tmp_path / "shared"), str(log)]
    racing = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]  # fmt: skip
    outputs = [process.communicate(timeout=120) for process in racing]
    assert [process.returncode for process in racing] == [0, 0], outputs
    assert [out.strip() for out, _ in outputs] == ["read 72", "read 72"]
    assert len(log.read_text().splitlines()) == 1  # one download, not one per process


def test_every_datamodule_is_one_of_the_contract() -> None:
    """The CLI, export and the callbacks ask `AutoencoderDataModule`'s methods: every datamodule has them."""
    import ae_lightning.data as data

    modules = [getattr(data, name) for name in data.__all__ if name.endswith("DataModule")]
    assert len(modules) == 6 and all(issubclass(module, data.AutoencoderDataModule) for module in modules)


def test_a_datamodule_of_a_few_lines_fits_tests_and_predicts_through_the_cli(in_tmp: Path) -> None:
    """docs/architecture.md's recipe: `image_shape`, `value_range` and `load_splits` are all it takes."""
    from ae_lightning.cli import main

    flags = ["--data=tests.datamodules.NoisyLine", "--model=ae_lightning.models.AE", "--model.latent_dim=1",
             "--model.hidden_dims=[16]", "--trainer.max_epochs=3", "--trainer.accelerator=cpu",
             "--trainer.enable_progress_bar=false"]  # fmt: skip
    fitted = main(["fit", *flags, "--model.steps_per_call=2"])
    assert fitted.model.model.image_shape == (4,) and fitted.trainer.global_step == 18  # 3 x 300 / 50
    tested = main(["test", *flags])
    assert torch.isfinite(tested.trainer.callback_metrics["test/loss"])
    main(["predict", *flags])
    predictions = torch.load(next(in_tmp.glob("lightning_logs/*/predictions.pt")))
    assert predictions["index"].tolist() == list(range(100)) and predictions["latent"].shape == (100, 1)
