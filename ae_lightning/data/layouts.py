"""The layouts of a folder of images: which files are in which split, and their classes."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from ae_lightning.data.image_files import IMAGE_SUFFIXES, image_files
from ae_lightning.errors import DataError

Layout = Literal["auto", "classes", "splits", "one_class"]
LAYOUTS: tuple[str, ...] = ("auto", "classes", "splits", "one_class")
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: what to do with a defect image without its mask, or a mask without its image: stop, or leave it out
MissingMasks = Literal["error", "drop"]
MISSING_MASKS: tuple[str, ...] = ("error", "drop")
#: the folder of the one-class layout's ground-truth masks, beside train/ and test/ (MVTec AD)
GROUND_TRUTH = "ground_truth"


@dataclass
class Listing:
    """The files of a folder data set: per split found as a folder, the files and the class of each.

    Attributes:
        layout: the layout found (`classes`, `splits` or `one_class`).
        class_names: the classes, indexed by label; in the one-class layout the normal class is label 0.
        files: split -> files, for the splits that have a folder (the others are held out by the datamodule).
        labels: split -> the label of each file.
        masks: split -> the ground-truth mask file of each file (None: a normal image, all False); empty
            when the data set has no masks (the one-class layout without `root/ground_truth/`).
    """

    layout: str
    class_names: list[str]
    files: dict[str, list[Path]] = field(default_factory=dict)
    labels: dict[str, list[int]] = field(default_factory=dict)
    masks: dict[str, list[Path | None]] = field(default_factory=dict)

    def add(self, split: str, by_class: dict[str, list[Path]]) -> None:
        """Appends the files of each class of `by_class` to `split`."""
        for name, paths in by_class.items():
            label = self.class_names.index(name)
            self.files.setdefault(split, []).extend(paths)
            self.labels.setdefault(split, []).extend([label] * len(paths))


def _folders(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))


def images_by_class(folder: Path, loose_as: str | None = None) -> dict[str, list[Path]]:
    """The image files of each class folder of `folder` (searched in depth), by folder name; folders with
    no image are left out, with a warning. With `loose_as`, images lying in `folder` itself (no class
    folders) are one class of that name."""
    by_class, empty = {}, []
    for sub in _folders(folder):
        files = image_files(sub)
        if files:
            by_class[sub.name] = files
        else:
            empty.append(sub.name)
    if empty:
        rank_zero_warn(f"{folder}: no image files in {', '.join(empty)}/, left out")
    if not by_class and loose_as is not None:
        loose = [path for path in image_files(folder) if path.parent == folder]
        if loose:
            by_class[loose_as] = loose
    return by_class


def no_images(folder: Path) -> DataError:
    """The error for a folder without a single image file."""
    return DataError(
        f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {folder} or its subfolders: point --data.root at "
        "the folder of your images"
    )


def resolve_layout(root: Path, layout: Layout, normal_class: str) -> str:
    """`auto`: `one_class` when `root/train/` holds only a `<normal_class>/` folder (the MVTec AD layout),
    `splits` when there is another `root/train/`, else `classes`."""
    if layout != "auto":
        return layout
    train = root / "train"
    if not train.is_dir():
        return "classes"
    names = [folder.name for folder in _folders(train)]
    return "one_class" if names == [normal_class] else "splits"


def scan_folder(
    root: Path, layout: Layout, normal_class: str, missing_masks: MissingMasks = "error"
) -> Listing:
    """The files of the data set under `root` in `layout` (see `ImageFolderDataModule`)."""
    if not root.is_dir():
        raise DataError(f"--data.root {root}: no such folder; point it at the folder of your images")
    layout = resolve_layout(root, layout, normal_class)
    if layout == "one_class":
        listing = _scan_one_class(root, normal_class)
        if (root / GROUND_TRUTH).is_dir():
            pair_masks(listing, root, missing_masks)
        return listing
    if layout == "classes":
        by_class = images_by_class(root, loose_as=root.name)
        if not by_class:
            raise no_images(root)
        listing = Listing("classes", sorted(by_class))
        listing.add("train", by_class)
        return listing
    found = {split: images_by_class(root / split) for split in SPLITS if (root / split).is_dir()}
    if not found.get("train"):
        raise DataError(
            f"no image files in class folders of {root / 'train'}: the `splits` layout is "
            "root/train/<class>/*.png (and optionally root/val/<class>/, root/test/<class>/)"
        )
    listing = Listing("splits", sorted({name for by_class in found.values() for name in by_class}))
    for split, by_class in found.items():
        listing.add(split, by_class)
    return listing


def _scan_one_class(root: Path, normal_class: str) -> Listing:
    """root/train/<normal>/ for training; root/test/<normal>/ and root/test/<defect>/ (any number) for test;
    root/val/ (optional) like test."""
    normal = root / "train" / normal_class
    train = image_files(normal) if normal.is_dir() else []
    if not train:
        raise DataError(
            f"the one-class layout needs the normal training images in {normal}/ and there are none: "
            f"put them there (root/train/{normal_class}/, root/test/{normal_class}/, root/test/<defect>/), "
            "or set --data.normal_class to the name of your normal folder"
        )
    splits = {"test": images_by_class(root / "test") if (root / "test").is_dir() else {}}
    if (root / "val").is_dir():
        splits["val"] = images_by_class(root / "val")
    test = splits["test"]
    if normal_class not in test or len(test) < 2:
        raise DataError(
            f"the one-class layout needs {root / 'test'}/ with normal images in {normal_class}/ and "
            f"anomalous ones in one folder per defect; found {sorted(test) or 'no image folders'}"
        )
    defects = sorted({name for by_class in splits.values() for name in by_class} - {normal_class})
    listing = Listing("one_class", [normal_class, *defects])
    listing.add("train", {normal_class: train})
    for split, by_class in splits.items():
        listing.add(split, by_class)
    return listing


def pair_masks(listing: Listing, root: Path, missing_masks: MissingMasks) -> None:
    """Pairs every defect image of test and val, `root/<split>/<defect>/<sub>/<stem>.<ext>`, with its mask
    `root/ground_truth/<defect>/<sub>/<stem>_mask.<ext>` (MVTec AD; any image suffix, .png first) in
    `listing.masks`; normal images (label 0) have none. A defect image without its mask, or a mask without
    its image, is an error, or with `missing_masks` `drop` left out (the image) or ignored (the mask)."""
    truth = root / GROUND_TRUTH
    found: dict[Path, Path] = {}  # the mask's path under ground_truth/ without its suffix -> the file
    for path in image_files(truth):
        key = path.relative_to(truth).with_suffix("")
        if key not in found or _suffix_rank(path) < _suffix_rank(found[key]):
            found[key] = path
    paired: set[Path] = set()
    missing: list[tuple[Path, Path]] = []  # (image, the mask expected)
    listing.masks["train"] = [None] * len(listing.files["train"])
    for split in ("test", "val"):
        if split not in listing.files:
            continue
        kept: list[tuple[Path, int, Path | None]] = []
        for path, label in zip(listing.files[split], listing.labels[split], strict=True):
            key = path.relative_to(root / split).parent / f"{path.stem}_mask"
            paired.add(key)
            if label == 0:
                kept.append((path, label, None))
            elif key in found:
                kept.append((path, label, found[key]))
            else:
                missing.append((path, truth / f"{key}.png"))
        listing.files[split] = [path for path, _, _ in kept]
        listing.labels[split] = [label for _, label, _ in kept]
        listing.masks[split] = [mask for _, _, mask in kept]
    unpaired = [mask for key, mask in sorted(found.items()) if key not in paired]
    drop = missing_masks == "drop"
    if missing:
        (image, mask), more = missing[0], _more(len(missing))
        if not drop:
            raise DataError(
                f"the defect image {image} has no mask {mask}{more}: add the masks, or set "
                "--data.missing_masks drop to leave such images out"
            )
        rank_zero_warn(f"left out {len(missing)} defect images without a mask, the first {image} ({mask})")
    if unpaired:
        mask = unpaired[0]
        image = root / "test" / mask.relative_to(truth).parent / mask.stem.removesuffix("_mask")
        elsewhere = " (or the same under val/)" if "val" in listing.files else ""
        if not drop:
            raise DataError(
                f"the mask {mask} has no image {image}.png (or another image suffix){elsewhere}"
                f"{_more(len(unpaired))}: add the image or remove the mask, or set --data.missing_masks drop "
                "to ignore such masks"
            )
        rank_zero_warn(f"ignored {len(unpaired)} masks without an image, the first {mask}")
    if not any(listing.labels["test"]):
        raise DataError(
            f"no defect image of {root / 'test'} is left with its mask in {truth}: add their masks"
        )


def _suffix_rank(path: Path) -> int:
    return IMAGE_SUFFIXES.index(path.suffix.lower())


def _more(count: int) -> str:
    return f" (and {count - 1} more)" if count > 1 else ""
