"""LightningDataModule for a folder of your own images: class folders, or the one-class inspection layout."""

import os
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from ae_lightning.data.base import ImageDataModule, Split, held_out
from ae_lightning.data.datasets import ImageTensorDataset
from ae_lightning.data.image_cache import DecodedImages, DecodeSettings, decode_images, default_cache_dir
from ae_lightning.data.image_files import RESIZE_MODES, Resize, image_files, image_size_of
from ae_lightning.data.layouts import (
    LAYOUTS,
    MISSING_MASKS,
    Layout,
    Listing,
    MissingMasks,
    no_images,
    scan_folder,
)
from ae_lightning.data.masks import decode_masks
from ae_lightning.errors import ConfigError, DataError


class _Items(NamedTuple):
    """A split's items: their rows of the decoded images and masks (-1: none), labels and files."""

    rows: torch.Tensor
    labels: torch.Tensor
    paths: list[str]
    mask_rows: torch.Tensor

    def pick(self, index: torch.Tensor) -> "_Items":
        """The items at `index` (N,)."""
        rows, labels, mask_rows = self.rows[index], self.labels[index], self.mask_rows[index]
        return _Items(rows, labels, [self.paths[i] for i in index.tolist()], mask_rows)


class ImageFolderDataModule(ImageDataModule):
    """Your own images from a folder, decoded once (in parallel, then cached), of any size and mode.

    Layouts (`layout`; `auto` picks by what is there):
      - `classes`: `root/<class>/**/*.png` (classes sorted by name, as torchvision's ImageFolder), or
        images lying in `root` itself (one class); `val_fraction` and `test_fraction` of the images are held
        out by `split_seed` for validation and test.
      - `splits`: `root/train/<class>/`, and `root/val/<class>/`, `root/test/<class>/` where you have them
        (a missing one is held out of train).
      - `one_class` (MVTec AD, anomalib's Folder): `root/train/good/` (normal images only),
        `root/test/good/` and `root/test/<defect>/` for any number of defects, optionally `root/val/` like
        test. Training and validation (held out of train/good unless `root/val/` exists) see normal images;
        every batch carries `gt_anomaly` (not in `good`), so `test` reports AUROC, AUPR and F1 at the
        threshold from validation. Picked by `auto` when `root/train/` holds only `good/`. With
        `root/ground_truth/<defect>/<name>_mask.png` (MVTec AD) the validation and test batches carry
        `gt_mask` too: each defect image's mask, all False for a normal image (docs/data.md).

    Files ending in .png, .jpg, .jpeg, .bmp or .webp (any case) are images, searched in subfolders too;
    other and hidden files are ignored. Each image is decoded with torchvision (PIL for BMP), converted to
    `channels` (gray, palette, alpha and 16-bit images included), fitted to `image_size` by `resize`, and
    kept as uint8: on the training device when `resident` and it has room, else read by a DataLoader from a
    memory-mapped cache file.

    Args:
        root: the folder of the data set.
        layout: `classes` (root/<class>/), `splits` (root/train/<class>/, root/val/..., root/test/...),
            `one_class` (root/train/good/, root/test/good/, root/test/<defect>/) or `auto`: picked by what is
            there (docs/data.md).
        normal_class: the folder name of the normal images in the one-class layout.
        missing_masks: in the one-class layout with `root/ground_truth/`, what a defect image without its
            mask (`ground_truth/<defect>/<name>_mask.png`) or a mask without its image does: `error` stops
            with its name, `drop` leaves the image out of its split (or ignores the mask) with a warning.
        image_size: the (height, width) every image is fitted to, or one number for a square; None: the size
            of the first training image (in path order).
        resize: how an image of another size is fitted: `crop` (scale to cover, cut the centre out; keeps
            the aspect ratio), `pad` (scale to fit inside, centre on black; keeps the aspect ratio) or
            `stretch` (scale each side on its own).
        channels: 3 (RGB) or 1 (gray); images of the other mode are converted.
        val_fraction: share of the training images (of all images in the `classes` layout) held out for
            validation when there is no `root/val/`.
        test_fraction: share of all images held out for test in the `classes` layout (of the training images
            in `splits` without `root/test/`).
        predict_root: a folder of images (searched in depth, any layout) that `predict` scores, one row
            per file with its path; None: predict the test split.
        skip_corrupt: leave out files that cannot be decoded (how many is reported), instead of stopping at
            them with the name of the first.
        cache_dir: where the decoded images are kept for the next run (a `.npy` file named by a hash of the
            files and the decode settings); None: `$XDG_CACHE_HOME/ae_lightning/images` (~/.cache/...).
        decode_workers: processes decoding the files; None: one per CPU core, at most 8.
        batch_size: images per batch on each device (under DDP the global batch is batch_size x devices).
        num_workers: DataLoader worker processes when the data is not resident (0 reads in the main process).
        split_seed: seed of the held-out splits (the same seed gives the same split on every machine).
        value_range: range the pixels are scaled to, [0, 1] or [-1, 1].
        resident: keep the images on the training device and cut batches there (see `MNISTDataModule`);
            falls back to a DataLoader, with a warning, when the device lacks the memory.
        steps_per_call: how many batches each training item holds (set by the CLI from the model).
    """

    def __init__(
        self,
        root: str | Path,
        layout: Layout = "auto",
        normal_class: str = "good",
        missing_masks: MissingMasks = "error",
        image_size: int | Sequence[int] | None = None,
        resize: Resize = "crop",
        channels: int = 3,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        predict_root: str | Path | None = None,
        skip_corrupt: bool = False,
        cache_dir: str | Path | None = None,
        decode_workers: int | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        split_seed: int = 42,
        value_range: Sequence[float] = (0.0, 1.0),
        resident: bool = True,
        steps_per_call: int = 1,
    ) -> None:
        super().__init__(batch_size, num_workers, split_seed, value_range, resident, steps_per_call)
        if layout not in LAYOUTS:
            raise ConfigError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
        if missing_masks not in MISSING_MASKS:
            raise ConfigError(f"missing_masks must be one of {list(MISSING_MASKS)}, got {missing_masks!r}")
        if resize not in RESIZE_MODES:
            raise ConfigError(f"resize must be one of {list(RESIZE_MODES)}, got {resize!r}")
        if channels not in (1, 3):
            raise ConfigError(f"channels must be 1 (gray) or 3 (RGB), got {channels}")
        if image_size is not None:
            image_size = [image_size] * 2 if isinstance(image_size, int) else [int(s) for s in image_size]
            if len(image_size) != 2 or min(image_size) < 1:
                raise ConfigError(f"image_size must be a positive size or [height, width], got {image_size}")
        for name, share in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 < share < 1:
                raise ConfigError(f"{name} must be between 0 and 1 (a share of the images), got {share}")
        if decode_workers is not None and decode_workers < 0:
            raise ConfigError(f"decode_workers must be >= 0, got {decode_workers}")
        value_range = list(self.value_range)  # hparams hold lists, as YAML does
        self.save_hyperparameters()
        # checked and normalised (the hparams hold what the config said, e.g. 64 for image_size 64x64)
        self.layout, self.normal_class, self.image_size = layout, normal_class, image_size
        self.resize, self.channels, self.skip_corrupt = resize, channels, skip_corrupt
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.missing_masks = missing_masks
        self.root = Path(root).expanduser()
        self.predict_root = None if predict_root is None else Path(predict_root).expanduser()
        self.cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
        self.decode_workers = min(8, os.cpu_count() or 1) if decode_workers is None else decode_workers

    def describe(self) -> str:
        return f"images of {self.root}"

    def export_description(self) -> dict[str, Any]:
        """The class names (None where the folder is not on this machine: an export does not need it) and
        how each image was fitted to the model's size."""
        try:
            class_names = self.class_names
        except DataError:
            class_names = None
        return {"datamodule": type(self).__name__, "class_names": class_names, "resize": self.resize}

    def sample_names(self) -> list[str] | None:
        """The file of each predicted image."""
        return self.datasets[self.predict_split()].paths

    @cached_property
    def listing(self) -> Listing:
        """The files of the data set by split, and the class names (scanned once)."""
        return scan_folder(self.root, self.layout, self.normal_class, self.missing_masks)

    @property
    def class_names(self) -> list[str]:  # type: ignore[override]
        """The classes, indexed by label (in the one-class layout the normal class is 0)."""
        return self.listing.class_names

    @cached_property
    def image_shape(self) -> tuple[int, int, int]:  # type: ignore[override]
        """(channels, height, width) of the images the model sees."""
        size = self.image_size
        if size is None:
            first = self.listing.files["train"][0]
            try:
                size = image_size_of(first)
            except (OSError, ValueError) as err:
                raise DataError(
                    f"cannot read the size of {first} ({' '.join(str(err).split())}): give --data.image_size"
                ) from None
        return (self.channels, *size)

    @property
    def settings(self) -> DecodeSettings:
        return DecodeSettings(tuple(self.image_shape[1:]), self.resize, self.channels)

    def _all_files(self) -> list[Path]:
        return [path for split in self.listing.files for path in self.listing.files[split]]

    def _predict_files(self) -> list[Path]:
        files = image_files(self.predict_root) if self.predict_root.is_dir() else []
        if not files:
            raise no_images(self.predict_root)
        return files

    def _decode(self, files: list[Path], what: str) -> DecodedImages:
        decoded = decode_images(files, self.settings, self.cache_dir, self.decode_workers, what)
        if decoded.failures:
            (path, reason), count = decoded.failures[0], len(decoded.failures)
            if not self.skip_corrupt:
                raise DataError(
                    f"{path} cannot be decoded as an image ({reason})"
                    + (f", nor can {count - 1} more files" if count > 1 else "")
                    + ": remove or replace it, or set --data.skip_corrupt true to leave such files out"
                )
            rank_zero_warn(f"{what}: left out {count} files that do not decode, the first {path}: {reason}")
        return decoded

    def _decode_folder(
        self,
    ) -> tuple[DecodedImages, dict[str, torch.Tensor], torch.Tensor | None, dict[str, torch.Tensor]]:
        """(the decoded images, the row of each file per split (-1: did not decode), the decoded masks (None:
        the data set has none), the row of each file's mask per split (-1: none))."""
        listing = self.listing
        decoded = self._decode(self._all_files(), f"images of {self.root}")
        counts = [len(files) for files in listing.files.values()]
        image_rows = dict(zip(listing.files, decoded.rows.split(counts), strict=True))
        if not listing.masks:
            return decoded, image_rows, None, {}
        masks, mask_rows = decode_masks(
            listing, image_rows, self.settings, self.cache_dir, self.decode_workers, self.skip_corrupt,
            f"masks of {self.root}",
        )  # fmt: skip
        return decoded, image_rows, masks, mask_rows

    def prepare_data(self) -> None:
        """Decodes the files into the cache (once per node; a cached set is not decoded again)."""
        self._decode_folder()
        if self.predict_root is not None:
            self._decode(self._predict_files(), f"images of {self.predict_root}")

    def load_splits(self) -> dict[Split, ImageTensorDataset]:
        """The splits over the decoded images: the folders' own, and the held-out ones."""
        listing = self.listing
        decoded, image_rows, masks, mask_rows = self._decode_folder()
        items: dict[str, _Items] = {}
        for split, files in listing.files.items():
            rows, labels = image_rows[split], torch.tensor(listing.labels[split], dtype=torch.int64)
            split_masks = mask_rows.get(split, torch.full_like(rows, -1))
            keep = rows >= 0
            if masks is not None:  # a defect image whose mask did not decode is left out (skip_corrupt)
                keep &= (labels == 0) | (split_masks >= 0)
            every = _Items(rows, labels, list(map(str, files)), split_masks)
            items[split] = every.pick(keep.nonzero().flatten())
        total = len(items["train"].rows)  # the shares are of the images there before any is held out
        for split, share in (("test", self.test_fraction), ("val", self.val_fraction)):
            if split not in items:
                items["train"], items[split] = self._hold_out(items["train"], round(total * share), split)
        one_class = listing.layout == "one_class"
        datasets: dict[Split, ImageTensorDataset] = {}
        for split in ("train", "val", "test"):
            rows, labels, paths, split_masks = items[split]
            gt_anomaly = labels != 0 if one_class else None
            with_masks = masks is not None and split != "train"  # training sees normal images only
            datasets[split] = ImageTensorDataset(
                decoded.images, labels, self.value_range, gt_anomaly=gt_anomaly, rows=rows, paths=paths,
                masks=masks if with_masks else None, mask_rows=split_masks if with_masks else None,
            )  # fmt: skip
        if self.predict_root is not None:
            files = self._predict_files()
            predicted = self._decode(files, f"images of {self.predict_root}")
            decodable = (predicted.rows >= 0).nonzero().flatten()
            datasets["predict"] = ImageTensorDataset(
                predicted.images,
                None,  # unlabelled
                self.value_range,
                rows=predicted.rows[decodable],
                paths=[str(files[i]) for i in decodable.tolist()],
            )
        return datasets

    def _hold_out(self, train: _Items, count: int, split: str) -> tuple[_Items, _Items]:
        """(the rest of train, `count` items held out of it by `split_seed`)."""
        count = max(1, count)
        if count >= len(train.rows):
            raise DataError(
                f"holding out {count} of the {len(train.rows)} training images of {self.root} for {split} "
                f"(--data.{split}_fraction) leaves none to train on: lower it, or add images or a {split}/"
            )
        seed = self.split_seed + (1 if split == "test" else 0)
        kept, held = held_out(len(train.rows), count, seed)
        return train.pick(kept.sort().values), train.pick(held.sort().values)
