"""Ground-truth masks of the one-class folder layout (`root/ground_truth/<defect>/<stem>_mask.png`, MVTec
AD): paired, checked, decoded like the images by nearest interpolation, carried by batches as `gt_mask`."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ae_lightning.batch import Batch
from ae_lightning.data import ImageFolderDataModule
from ae_lightning.data.image_cache import CACHE_VERSION, DecodeSettings, cache_key
from ae_lightning.data.image_files import image_files
from ae_lightning.errors import ConfigError, DataError
from tests.test_folder import folder_module

#: the files' (height, width): not square, so crop and pad move the masks
HEIGHT, WIDTH = 20, 32


def drawn_masks() -> dict[str, np.ndarray]:
    """The mask of each defect image as written, uint8 (H, W): 000 a rectangle of 255; 001 a rectangle of
    128 (a defect: over 127) beside one of 127 (not a defect)."""
    first, second = np.zeros((HEIGHT, WIDTH), np.uint8), np.zeros((HEIGHT, WIDTH), np.uint8)
    first[4:10, 8:20] = 255
    second[12:18, 2:9] = 128
    second[2:6, 24:30] = 127
    return {"000": first, "001": second}


def write_masked_folder(root: Path) -> Path:
    """root/train/good/ (4), test/good/ (2), test/scratch/ (2) RGB PNGs of 20x32, and ground_truth/scratch/
    <stem>_mask.png for the two defect images."""
    rng = np.random.default_rng(0)
    counts = {"train/good": 4, "test/good": 2, "test/scratch": 2}
    for folder, count in counts.items():
        (root / folder).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / folder / f"{i:03d}.png")
    (root / "ground_truth" / "scratch").mkdir(parents=True)
    for stem, mask in drawn_masks().items():
        Image.fromarray(mask).save(root / "ground_truth" / "scratch" / f"{stem}_mask.png")
    return root


@pytest.fixture
def masked(tmp_path: Path) -> Path:
    return write_masked_folder(tmp_path / "parts")


def defects(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(mask > 127)


def by_stem(dataset, folder: str) -> dict[str, int]:
    """The index of each file of `folder` (e.g. "scratch") in `dataset`, by stem."""
    return {Path(p).stem: i for i, p in enumerate(dataset.paths) if Path(p).parent.name == folder}


def pad_rows(mask: torch.Tensor) -> torch.Tensor:
    """20x32 centred on 32x32 (6 rows of False above and below)."""
    return torch.cat([torch.zeros(6, WIDTH, dtype=torch.bool), mask, torch.zeros(6, WIDTH, dtype=torch.bool)])


@pytest.mark.parametrize(
    "size, resize, expected, defect_pixels",
    [
        ((HEIGHT, WIDTH), "crop", lambda mask: mask, [72, 42]),  # the file's own size: the mask as drawn
        ((40, 64), "stretch", lambda mask: mask.repeat_interleave(2, 0).repeat_interleave(2, 1), [288, 168]),
        ((20, 20), "crop", lambda mask: mask[:, 6:26], [72, 18]),  # the centre 20 of 32 columns
        ((32, 32), "pad", pad_rows, [72, 42]),
    ],
    ids=["as-is", "stretch-2x", "crop", "pad"],
)
def test_a_defect_images_mask_is_the_drawn_mask_fitted_like_the_image(
    size, resize, expected, defect_pixels: list[int], masked: Path, tmp_path: Path
) -> None:
    datamodule = folder_module(masked, tmp_path, image_size=list(size), resize=resize, val_fraction=0.25)
    test = datamodule.datasets["test"]
    scratch = by_stem(test, "scratch")
    assert sorted(scratch) == ["000", "001"]
    batch = test[torch.tensor([scratch["000"], scratch["001"]])]
    assert batch.gt_mask.dtype == torch.bool and batch.gt_mask.shape == (2, *size)
    assert batch.inputs.shape == (2, 3, *size)
    for row, (stem, mask) in enumerate(drawn_masks().items()):
        want = expected(defects(mask))
        assert torch.equal(batch.gt_mask[row], want), stem
        assert torch.equal(test[scratch[stem]].gt_mask, want)  # one item
    # 6x12 and 6x7 (the 127 rectangle of 001 is no defect); 2x2 each when stretched; crop keeps 3 of 7 columns
    assert batch.gt_mask.flatten(1).sum(1).tolist() == defect_pixels


def test_normal_images_have_empty_masks_train_none_and_val_all_false(masked: Path, tmp_path: Path) -> None:
    """Validation (held out of train/good) carries all-False masks, so validation batches hold gt_mask like
    test batches; training batches carry none."""
    datamodule = folder_module(masked, tmp_path, image_size=[HEIGHT, WIDTH], val_fraction=0.25)
    sizes = {split: len(dataset) for split, dataset in datamodule.datasets.items()}
    assert sizes == {"train": 3, "val": 1, "test": 4}
    test = datamodule.datasets["test"]
    good = list(by_stem(test, "good").values())
    assert test[torch.tensor(good)].gt_mask.shape == (2, HEIGHT, WIDTH)
    assert not test[torch.tensor(good)].gt_mask.any()
    assert all(batch.gt_mask is None for batch in datamodule.train_dataloader())
    val = list(datamodule.val_dataloader())
    assert [tuple(batch.gt_mask.shape) for batch in val] == [(1, HEIGHT, WIDTH)]
    assert not val[0].gt_mask.any() and not val[0].gt_anomaly.any()
    masks = torch.cat([batch.gt_mask for batch in datamodule.test_dataloader()])
    assert masks.flatten(1).sum(1).tolist() == [0, 0, 72, 42]  # good/000, good/001, scratch/000, scratch/001


def test_resident_streamed_item_and_batch_reads_give_the_same_masks(masked: Path, tmp_path: Path) -> None:
    options = {"image_size": [40, 64], "resize": "stretch", "val_fraction": 0.25, "batch_size": 3}
    resident = folder_module(masked, tmp_path, **options)
    streamed = folder_module(masked, tmp_path, resident=False, **options)
    assert resident.datasets["test"].rows is None and streamed.datasets["test"].rows is not None
    assert len(resident.datasets["test"].masks) == 2  # only the masks of its own rows
    for split in ("val", "test"):
        fast = list(getattr(resident, f"{split}_dataloader")())
        slow = list(getattr(streamed, f"{split}_dataloader")())  # items stacked by Batch.collate
        assert len(fast) == len(slow) > 0
        for a, b in zip(fast, slow, strict=True):
            assert torch.equal(a.gt_mask, b.gt_mask) and torch.equal(a.gt_anomaly, b.gt_anomaly)
    test = streamed.datasets["test"]
    whole = test[torch.arange(4)].gt_mask
    assert torch.equal(test.read_in_batches().__getitems__([0, 1, 2, 3]).gt_mask, whole)
    assert torch.equal(Batch.collate([test[i] for i in range(4)]).gt_mask, whole)
    assert int(whole.sum()) == 4 * (72 + 42)
    predicted = torch.cat([batch.gt_mask for batch in resident.predict_dataloader()])  # predicts test
    assert torch.equal(predicted, whole)


def remove_mask(root: Path) -> Path:
    (root / "ground_truth" / "scratch" / "001_mask.png").unlink()
    return root / "test" / "scratch" / "001.png"


def add_unpaired_mask(root: Path) -> Path:
    path = root / "ground_truth" / "scratch" / "007_mask.png"
    Image.fromarray(np.zeros((HEIGHT, WIDTH), np.uint8)).save(path)
    return path


@pytest.mark.parametrize(
    "damage, expected",
    [
        (remove_mask, r"defect image .*scratch/001\.png has no mask .*ground_truth/scratch/001_mask\.png"),
        (add_unpaired_mask, r"mask .*scratch/007_mask\.png has no image .*test/scratch/007\.png"),
        (
            lambda root: Image.new("L", (10, 12)).save(root / "ground_truth" / "scratch" / "000_mask.png"),
            r"000_mask\.png is not the size of its image \(12x10 against 20x32, height x width\)",
        ),
    ],
    ids=["image-without-mask", "mask-without-image", "mask-of-another-size"],
)
def test_masks_that_do_not_pair_or_fit_are_one_line_errors(
    damage, expected: str, masked: Path, tmp_path
) -> None:
    damage(masked)
    with pytest.raises(DataError, match=expected) as raised:
        folder_module(masked, tmp_path, image_size=[HEIGHT, WIDTH])
    assert "\n" not in str(raised.value)


def test_missing_masks_drop_leaves_the_image_out_and_ignores_the_mask(masked: Path, tmp_path: Path) -> None:
    image, mask = remove_mask(masked), add_unpaired_mask(masked)
    with (
        pytest.warns(UserWarning, match=rf"left out 1 defect images without a mask, the first {image}"),
        pytest.warns(UserWarning, match=rf"ignored 1 masks without an image, the first {mask}"),
    ):
        datamodule = folder_module(masked, tmp_path, image_size=[HEIGHT, WIDTH], missing_masks="drop")
    test = datamodule.datasets["test"]
    assert [Path(p).relative_to(masked / "test").as_posix() for p in test.paths] == [
        "good/000.png", "good/001.png", "scratch/000.png"
    ]  # fmt: skip
    assert test[torch.arange(3)].gt_mask.flatten(1).sum(1).tolist() == [0, 0, 72]
    with pytest.raises(ConfigError, match="missing_masks must be one of \\['error', 'drop'\\], got 'skip'"):
        ImageFolderDataModule(masked, missing_masks="skip")


def test_a_corrupt_mask_is_named_or_skipped_with_its_image(masked: Path, tmp_path: Path) -> None:
    (masked / "ground_truth" / "scratch" / "001_mask.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError, match=r"mask .*001_mask\.png cannot be decoded .*--data\.skip_corrupt"):
        folder_module(masked, tmp_path, image_size=[HEIGHT, WIDTH])
    with pytest.warns(UserWarning, match="left out 1 defect images whose mask does not decode"):
        datamodule = folder_module(masked, tmp_path, image_size=[HEIGHT, WIDTH], skip_corrupt=True)
    assert [Path(p).name for p in datamodule.datasets["test"].paths] == ["000.png", "001.png", "000.png"]


def test_without_ground_truth_batches_carry_no_masks(masked: Path, tmp_path: Path) -> None:
    shutil.rmtree(masked / "ground_truth")
    datamodule = folder_module(masked, tmp_path, image_size=[HEIGHT, WIDTH], val_fraction=0.25)
    assert datamodule.listing.masks == {}
    for split, dataset in datamodule.datasets.items():
        assert dataset[torch.arange(len(dataset))].gt_mask is None, split
        assert dataset[0].gt_mask is None
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1  # the images only


def test_a_second_setup_reads_both_caches_and_the_image_key_is_unchanged(
    masked: Path, tmp_path: Path
) -> None:
    first = folder_module(masked, tmp_path, image_size=[HEIGHT, WIDTH])
    cached = sorted((tmp_path / "cache").glob("*.npy"))
    assert len(cached) == 2  # the images and the masks
    again = folder_module(masked, tmp_path, image_size=[HEIGHT, WIDTH], val_fraction=0.5)
    assert sorted((tmp_path / "cache").glob("*.npy")) == cached
    assert torch.equal(
        first.datasets["test"][torch.arange(4)].gt_mask, again.datasets["test"][torch.arange(4)].gt_mask
    )
    # the images' key is the one written before masks existed: no image cache is decoded again
    files = image_files(masked / "train") + image_files(masked / "test")
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, [HEIGHT, WIDTH], "crop", 3]).encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    assert cache_key(files, DecodeSettings((HEIGHT, WIDTH), "crop", 3)) == digest.hexdigest()[:32]
    assert cache_key(files, DecodeSettings((HEIGHT, WIDTH), "crop", 3, "nearest")) != digest.hexdigest()[:32]


def test_a_val_folder_pairs_its_defects_with_the_same_ground_truth(masked: Path, tmp_path: Path) -> None:
    """val/<defect>/000.png pairs with ground_truth/<defect>/000_mask.png, as test/<defect>/000.png does."""
    for folder in ("good", "scratch"):
        (masked / "val" / folder).mkdir(parents=True)
        shutil.copy(masked / "test" / folder / "000.png", masked / "val" / folder / "000.png")
    datamodule = folder_module(masked, tmp_path, image_size=[HEIGHT, WIDTH], resident=False)
    assert len(datamodule.datasets["train"]) == 4  # nothing held out: val/ is there
    val = datamodule.datasets["val"]
    batch = val[torch.arange(2)]
    assert [Path(p).parent.name for p in val.paths] == ["good", "scratch"]
    assert batch.gt_mask.flatten(1).sum(1).tolist() == [0, 72]
    assert torch.equal(batch.gt_mask[1], defects(drawn_masks()["000"]))
    assert len(datamodule.datasets["test"].masks) == 2  # the two masks, decoded once for both splits
