"""Your own images: the folder datamodule on real PNG, JPEG, BMP and WebP files written in tmp_path."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ae_lightning.cli import main
from ae_lightning.data import ImageFolderDataModule
from ae_lightning.data.image_files import fit_to_size, image_files, read_image
from ae_lightning.files import LOCK_NAME
from tests.conftest import CONFIGS, REPO, read_png, run_and_fail, run_folder, tiny_folder
from tests.images import write_class_folder, write_one_class_folder


def folder_module(root: Path, tmp_path: Path, **kwargs) -> ImageFolderDataModule:
    """A datamodule on `root` with its cache in tmp_path, decoding in this process, set up for fit."""
    options = {"image_size": 32, "cache_dir": tmp_path / "cache", "decode_workers": 0, **kwargs}
    datamodule = ImageFolderDataModule(root, **options)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def test_class_folders_are_the_classes_sorted_by_name(data_dir: Path, tmp_path: Path) -> None:
    datamodule = folder_module(data_dir / "images", tmp_path)
    assert datamodule.listing.layout == "classes"
    assert datamodule.class_names == ["class_0", "class_1", "class_2"]
    sizes = {split: len(dataset) for split, dataset in datamodule.datasets.items()}
    assert sizes == {"train": 48, "val": 6, "test": 6}  # 60 images, 10% test, then 10% of the rest
    paths = [path for dataset in datamodule.datasets.values() for path in dataset.paths]
    assert sorted(paths) == sorted(map(str, image_files(data_dir / "images")))  # each file in one split
    train = datamodule.datasets["train"]
    for i in (0, 7, 30):
        assert train.paths[i].split("/")[-2] == datamodule.class_names[train.labels[i]]
    batch = train[torch.arange(8)]
    assert batch.inputs.shape == (8, 3, 32, 32) and batch.gt_anomaly is None
    assert batch.inputs.min() >= 0 and batch.inputs.max() <= 1


def test_the_held_out_splits_follow_the_seed(data_dir: Path, tmp_path: Path) -> None:
    first, again = (folder_module(data_dir / "images", tmp_path) for _ in range(2))
    other = folder_module(data_dir / "images", tmp_path, split_seed=7)
    assert first.datasets["val"].paths == again.datasets["val"].paths
    assert first.datasets["val"].paths != other.datasets["val"].paths


def test_the_one_class_layout_tests_normal_against_every_defect(data_dir: Path, tmp_path: Path) -> None:
    datamodule = folder_module(data_dir / "inspection", tmp_path)
    assert datamodule.listing.layout == "one_class"  # found by `auto`: train/ holds only good/
    assert datamodule.class_names == ["good", "dent", "scratch"]
    for split in ("train", "val"):
        dataset = datamodule.datasets[split]
        assert not dataset.gt_anomaly.any() and all("/train/good/" in path for path in dataset.paths)
    test = datamodule.datasets["test"]
    folders = [path.split("/")[-2] for path in test.paths]
    assert test.gt_anomaly.tolist() == [name != "good" for name in folders]
    assert sorted(set(folders)) == ["dent", "good", "scratch"]


def test_explicit_split_folders_are_used_and_a_missing_one_held_out(tmp_path: Path) -> None:
    root = tmp_path / "splits"
    write_class_folder(root / "train", count=30)
    write_class_folder(root / "test", count=12, seed=1)
    datamodule = folder_module(root, tmp_path)
    assert datamodule.listing.layout == "splits"
    assert all("/test/" in path for path in datamodule.datasets["test"].paths)
    assert len(datamodule.datasets["test"]) == 12
    assert all("/train/" in path for path in datamodule.datasets["val"].paths)  # held out of train
    assert len(datamodule.datasets["val"]) == 3


def test_images_directly_in_the_root_are_one_class_and_other_files_are_ignored(tmp_path: Path) -> None:
    root = tmp_path / "faces"
    write_class_folder(tmp_path / "made", count=20)
    root.mkdir()
    for i, path in enumerate(image_files(tmp_path / "made")):
        shutil.copy(path, root / f"{i}{path.suffix.upper()}")  # suffixes in any case
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"not read")
    datamodule = folder_module(root, tmp_path)
    assert datamodule.class_names == ["faces"]
    assert sum(len(dataset) for dataset in datamodule.datasets.values()) == 20


def test_gray_palette_alpha_16_bit_bmp_and_webp_become_the_channels_asked_for(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = (rng.random((20, 30, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "rgb.webp", lossless=True)
    Image.fromarray(pixels).save(tmp_path / "rgb.bmp")
    Image.fromarray(pixels).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(pixels).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(pixels[..., 0]).save(tmp_path / "gray.jpg")
    Image.fromarray(pixels[..., 0].astype(np.uint16) * 257).save(tmp_path / "gray16.png")
    for path in sorted(tmp_path.iterdir()):
        for channels in (1, 3):
            image = read_image(path, channels)
            assert image.dtype == torch.uint8 and image.shape == (channels, 20, 30), path.name
    lossless = torch.from_numpy(pixels).permute(2, 0, 1)
    assert torch.equal(read_image(tmp_path / "rgb.webp", 3), lossless)
    assert torch.equal(read_image(tmp_path / "rgb.bmp", 3), lossless)
    assert torch.equal(read_image(tmp_path / "gray16.png", 1)[0], torch.from_numpy(pixels[..., 0]))


def test_crop_keeps_the_centre_pad_keeps_everything_stretch_changes_the_aspect() -> None:
    """A 20x40 image, black left half and white right half, made 20x20 three ways."""
    image = torch.zeros(1, 20, 40, dtype=torch.uint8)
    image[..., 20:] = 255
    crop = fit_to_size(image, (20, 20), "crop")  # the centre: 10 black columns, 10 white
    assert torch.equal(crop, image[..., 10:30])
    pad = fit_to_size(image, (20, 20), "pad")  # scaled to 10x20, centred: black bands above and below
    assert pad.shape == (1, 20, 20)
    assert (pad[:, :5] == 0).all() and (pad[:, 15:] == 0).all()
    assert pad[:, 5:15, 12:].float().mean() > 200  # the white half is still there
    stretch = fit_to_size(image, (20, 20), "stretch")
    assert (stretch[..., :9] < 10).all() and (stretch[..., 11:] > 245).all()
    assert fit_to_size(image, (20, 40), "crop") is image  # the right size is left alone


def test_a_second_run_reads_the_cache_and_a_changed_file_decodes_again(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "images"
    shutil.copytree(data_dir / "images", root)
    decoded: list[str] = []
    import ae_lightning.data.image_cache as image_cache

    settings_decode = image_cache.DecodeSettings.decode
    monkeypatch.setattr(
        image_cache.DecodeSettings,
        "decode",
        lambda self, path: decoded.append(path.name) or settings_decode(self, path),
    )
    first = folder_module(root, tmp_path)
    assert len(decoded) == 60
    decoded.clear()
    second = folder_module(root, tmp_path, val_fraction=0.2)  # a split setting: the same cache
    assert decoded == []
    assert torch.equal(first.datasets["test"].images, second.datasets["test"].images)
    changed = image_files(root)[0]
    Image.new("RGB", (32, 32), (255, 255, 255)).save(
        changed, format="PNG" if changed.suffix == ".png" else "JPEG"
    )
    folder_module(root, tmp_path)
    assert len(decoded) == 60  # the key holds every file's size and time: all again, one cache file each
    decoded.clear()
    folder_module(root, tmp_path, image_size=24)  # another size: another cache
    assert len(decoded) == 60
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3
    hidden = {path.name for path in (tmp_path / "cache").glob(".*")}
    assert hidden == {LOCK_NAME}  # no temporary file left; the lock that serialises decoding stays


def test_resident_and_streamed_batches_are_the_same(data_dir: Path, tmp_path: Path) -> None:
    """The same images by device indexing and by a DataLoader with workers over the memory-mapped cache."""
    resident = folder_module(data_dir / "inspection", tmp_path, batch_size=8)
    streamed = folder_module(
        data_dir / "inspection", tmp_path, batch_size=8, resident=False, num_workers=2, decode_workers=2
    )
    for split in ("val", "test"):
        fast = list(getattr(resident, f"{split}_dataloader")())
        slow = list(getattr(streamed, f"{split}_dataloader")())
        assert len(fast) == len(slow) > 0
        for a, b in zip(fast, slow, strict=True):
            assert torch.equal(a.inputs, b.inputs) and torch.equal(a.gt_anomaly, b.gt_anomaly)


def test_fit_test_and_predict_a_one_class_folder_through_the_cli(data_dir: Path, in_tmp: Path) -> None:
    config = ["--config", str(CONFIGS / "folder_anomaly.yaml")]
    flags = tiny_folder(data_dir / "inspection", in_tmp / "cache")
    fitted = main(["fit", *config, *flags, "--trainer.max_epochs=2"])
    grid = read_png(run_folder(in_tmp, "folder_anomaly") / "checkpoints" / "last.png")
    assert grid.shape[0] == 3 and grid.shape[1:] == (2 * 34 + 2, 8 * 34 + 2)  # 32x32 images, 2 rows
    assert fitted.model.model.image_shape == (3, 32, 32)
    tested = main(["test", *config, *flags, "--ckpt_path=last"])
    metrics = tested.trainer.callback_metrics
    for name in ("test/auroc", "test/aupr", "test/f1", "test/mse"):
        assert torch.isfinite(metrics[name]), name
    pictures = run_folder(in_tmp, "folder_anomaly", 1)
    assert read_png(pictures / "anomalies.png").shape[0] == 3
    assert (pictures / "anomaly_histogram.png").is_file()
    predicted = main(["predict", *config, *flags, "--ckpt_path=last"])
    lines = (run_folder(in_tmp, "folder_anomaly", 2) / "predictions.csv").read_text().splitlines()
    header, rows = lines[0].split(","), [line.split(",") for line in lines[1:]]
    assert header[:5] == ["index", "path", "labels", "anomaly_score", "pred_anomaly"]
    assert [row[1] for row in rows] == predicted.datamodule.datasets["test"].paths
    assert {row[1].split("/")[-2] for row in rows} == {"good", "dent", "scratch"}


def test_predict_scores_a_folder_of_new_images_by_path(data_dir: Path, in_tmp: Path) -> None:
    new = in_tmp / "new"
    new.mkdir()
    files = image_files(data_dir / "inspection" / "test")[:5]
    for path in files:
        shutil.copy(path, new / path.name)
    config = ["--config", str(CONFIGS / "folder.yaml")]
    flags = tiny_folder(data_dir / "images", in_tmp / "cache")
    main(["fit", *config, *flags])
    main(["predict", *config, *flags, "--ckpt_path=last", f"--data.predict_root={new}"])
    lines = (run_folder(in_tmp, "folder", 1) / "predictions.csv").read_text().splitlines()
    assert lines[0].startswith("index,path,anomaly_score,")  # no labels: no label column
    assert [line.split(",")[1] for line in lines[1:]] == [str(new / path.name) for path in sorted(files)]


def one_class_without(*folders: str):
    """A maker of a one-class folder with `folders` (relative paths) removed."""

    def make(root: Path) -> None:
        write_one_class_folder(root)
        for folder in folders:
            shutil.rmtree(root / folder)

    return make


def folder_of_text(root: Path) -> None:
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.txt").write_text("x")


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda root: root.mkdir(), "no image files"),
        (folder_of_text, "no image files"),
        (lambda root: None, "no such folder"),
        (one_class_without("train/good"), "train/good/"),
        (one_class_without("test/dent", "test/scratch"), "one folder per defect"),
    ],
    ids=["empty", "no-images", "missing", "no-train-good", "no-defects"],
)
def test_bad_folders_are_one_line_naming_the_folder(make, expected: str, in_tmp: Path, capsys) -> None:
    root = in_tmp / "data"
    make(root)
    layout = ["--data.layout=one_class"] if "defect" in expected or "good" in expected else []
    line = run_and_fail(
        ["fit", "--config", str(CONFIGS / "folder.yaml"), *tiny_folder(root, in_tmp / "cache"), *layout],
        capsys,
    )
    assert expected in line and str(root) in line
    assert not (in_tmp / "runs").exists() or not any((in_tmp / "runs").rglob("*.ckpt"))


def test_a_corrupt_image_names_the_file_or_is_skipped_and_counted(
    data_dir: Path, in_tmp: Path, capsys
) -> None:
    root = in_tmp / "images"
    shutil.copytree(data_dir / "images", root)
    (root / "class_1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "class_2" / "empty.jpg").write_bytes(b"")
    args = ["fit", "--config", str(CONFIGS / "folder.yaml"), *tiny_folder(root, in_tmp / "cache")]
    line = run_and_fail(args, capsys)
    assert "broken.png cannot be decoded" in line and "1 more" in line and "--data.skip_corrupt" in line
    with pytest.warns(UserWarning, match="left out 2 files"):
        fitted = main([*args, "--data.skip_corrupt=true"])
    assert sum(len(dataset) for dataset in fitted.datamodule.datasets.values()) == 60


@pytest.mark.parametrize(
    "flag, expected",
    [
        ("--data.channels=2", "channels must be 1 (gray) or 3 (RGB)"),
        ("--data.image_size=[0, 4]", "image_size must be a positive"),
        ("--data.val_fraction=1.5", "val_fraction must be between 0 and 1"),
        ("--data.resize=zoom", "resize"),
    ],
)
def test_bad_folder_options_are_one_line(
    flag: str, expected: str, data_dir: Path, in_tmp: Path, capsys
) -> None:
    flags = tiny_folder(data_dir / "images", in_tmp / "cache")
    line = run_and_fail(["fit", "--config", str(CONFIGS / "folder.yaml"), *flags, flag], capsys)
    assert expected in line


def test_a_gray_folder_trains_a_gray_model_of_the_first_images_size(data_dir: Path, in_tmp: Path) -> None:
    """channels 1 and no image_size: the model is built for (1, H, W) of the first training image."""
    flags = [flag for flag in tiny_folder(data_dir / "images", in_tmp / "cache") if "image_size" not in flag]
    fitted = main(["fit", "--config", str(CONFIGS / "folder.yaml"), *flags, "--data.channels=1",
                   "--data.image_size=null", "--model.hidden_dims=[8, 16]"])  # fmt: skip
    first = image_files(data_dir / "images")[0]
    height, width = Image.open(first).size[::-1]
    assert fitted.model.model.image_shape == (1, height, width)
    assert fitted.datamodule.datasets["train"][torch.arange(2)].inputs.shape == (2, 1, height, width)


def test_data_too_large_for_the_memory_is_streamed_from_the_cache(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no room, setup warns and keeps the splits memory-mapped; batches come from a DataLoader."""
    import ae_lightning.data.contract as contract

    monkeypatch.setattr(contract, "free_memory", lambda device: 0)
    with pytest.warns(UserWarning, match="does not fit beside the model"):
        streamed = folder_module(data_dir / "inspection", tmp_path, batch_size=8)
    assert not streamed.resident and streamed.datasets["train"].rows is not None  # still the mapped cache
    monkeypatch.undo()
    resident = folder_module(data_dir / "inspection", tmp_path, batch_size=8)
    assert resident.resident and resident.datasets["train"].rows is None  # copied into memory
    first = next(iter(streamed.test_dataloader()))
    assert torch.equal(first.inputs, next(iter(resident.test_dataloader())).inputs)


def real_mnist() -> Path | None:
    """The folder holding real MNIST's four archives (MNIST/raw/*.gz) on this machine, if there is one."""
    for folder in (REPO.parent / "shared" / "data", Path("/work/shared/data")):
        if (folder / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").is_file():
            return folder
    return None


@pytest.mark.slow
def test_real_digits_as_a_64x64_rgb_one_class_folder_score_as_on_the_mnist_datamodule(tmp_path: Path) -> None:
    """Real MNIST 3s against the other digits, rendered as 64x64 RGB PNGs in the one-class layout: the same
    conv AE reaches a test AUROC within 0.03 of its AUROC on the MNIST datamodule (28x28 gray)."""
    source = real_mnist()
    if source is None:
        if os.environ.get("AE_LIGHTNING_REQUIRE_MNIST"):
            pytest.fail("AE_LIGHTNING_REQUIRE_MNIST is set but no MNIST/raw/ archives were found")
        pytest.skip("real MNIST is not on this machine (../shared/data/MNIST/raw)")
    from benchmarks.folder_vs_mnist import compare

    data = tmp_path / "data"
    archives = lambda folder, names: [name for name in names if not name.endswith(".gz")]  # noqa: E731
    shutil.copytree(source / "MNIST" / "raw", data / "MNIST" / "raw", ignore=archives)
    result = compare(data, tmp_path / "work", normal=3, epochs=3, accelerator="cpu")
    assert result["mnist_auroc"] > 0.8  # both learned the digit
    assert abs(result["difference"]) <= 0.03, result


def test_the_folder_benchmark_runs_on_a_tiny_setting(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    output = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "folder_speed.py"), "--count=64", "--epochs=1",
         "--workers=0", f"--root={tmp_path / 'folder'}", f"--cache-dir={tmp_path / 'cache'}",
         f"--output={output}"],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    rows = {row["pipeline"]: row for row in json.loads(output.read_text())["rows"]}
    assert set(rows) == {"folder_cold", "folder_warm", "folder", "imagefolder"}
    assert rows["folder_cold"]["images"] == 64 and rows["folder_warm"]["seconds"] > 0
    for name in ("folder", "imagefolder"):
        assert rows[name]["images_per_second"] > 0 and rows[name]["loader_images_per_second"] > 0
    assert "| folder_cold |" in done.stdout
