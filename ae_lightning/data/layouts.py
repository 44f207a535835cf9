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


@dataclass
class Listing:
    """The files of a folder data set: per split found as a folder, the files and the class of each.

    Attributes:
        layout: the layout found (`classes`, `splits` or `one_class`).
        class_names: the classes, indexed by label; in the one-class layout the normal class is label 0.
        files: split -> files, for the splits that have a folder (the others are held out by the datamodule).
        labels: split -> the label of each file.
    """

    layout: str
    class_names: list[str]
    files: dict[str, list[Path]] = field(default_factory=dict)
    labels: dict[str, list[int]] = field(default_factory=dict)

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


def scan_folder(root: Path, layout: Layout, normal_class: str) -> Listing:
    """The files of the data set under `root` in `layout` (see `ImageFolderDataModule`)."""
    if not root.is_dir():
        raise DataError(f"--data.root {root}: no such folder; point it at the folder of your images")
    layout = resolve_layout(root, layout, normal_class)
    if layout == "one_class":
        return _scan_one_class(root, normal_class)
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
