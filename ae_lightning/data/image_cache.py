"""Decoding a list of image files once, in parallel, into a uint8 array on disk that later runs read back.

The array is a `.npy` file memory-mapped when read, so a data set larger than the memory can still be
served (the operating system pages it in as batches ask for it). Its name is a hash of the files (path,
size, modification time) and of the settings that shape the pixels (size, resize mode, channels,
interpolation): a file added, removed or changed, or another setting, decodes again; the split settings do
not. Ground-truth masks are decoded the same way, into a cache of their own (nearest interpolation, each
checked against the size of its image).
"""

import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ae_lightning.data.image_files import Interpolation, Resize, fit_to_size, image_size_of, read_image
from ae_lightning.errors import DataError
from ae_lightning.files import atomic_write, folder_lock, write_failure

#: bump when the decoding changes what the pixels of a cached array are
CACHE_VERSION = 1
#: how the reason of a file that is not the size of its `like` file begins (`decode_images`)
SIZE_MISMATCH = "not the size of"


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/ae_lightning/images`, or `~/.cache/ae_lightning/images`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ae_lightning" / "images"


@dataclass(frozen=True)
class DecodeSettings:
    """What decides the pixels of a decoded image: its (H, W), the resize mode, the channel count and the
    interpolation (`nearest` for masks)."""

    size: tuple[int, int]
    resize: Resize
    channels: int
    interpolation: Interpolation = "bilinear"

    def decode(self, path: Path) -> Tensor:
        """The file decoded and fitted, uint8 (channels, H, W)."""
        return fit_to_size(read_image(path, self.channels), self.size, self.resize, self.interpolation)


@dataclass
class DecodedImages:
    """The decoded images of a list of files.

    Attributes:
        images: (M, C, H, W) uint8, memory-mapped from the cache file (M = the files that decoded).
        rows: (N,) int64, the row of `images` of each of the N files, -1 for a file that did not decode.
        failures: (path, reason) of each file that did not decode.
    """

    images: Tensor
    rows: Tensor
    failures: list[tuple[str, str]]


def cache_key(files: Sequence[Path], settings: DecodeSettings, like: Sequence[Path] | None = None) -> str:
    """A hash of the files (absolute path, size, modification time), the decode settings and the `like`
    files (see `decode_images`)."""
    described = [CACHE_VERSION, list(settings.size), settings.resize, settings.channels]
    if settings.interpolation != "bilinear":  # the images' keys stay those of the caches already written
        described.append(settings.interpolation)
    digest = hashlib.sha256(json.dumps(described).encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    if like is not None:
        digest.update(b"like\n")
        digest.update(cache_key(like, settings).encode())
    return digest.hexdigest()[:32]


def failure_reason(err: Exception) -> str:
    """The first sentence of why a file did not decode, without torchvision's C++ source location."""
    message = re.sub(r"^.*\.(cpp|h):\d+,?\s*", "", " ".join(str(err).split()))
    return message.split(". ")[0].rstrip(".")[:200] or type(err).__name__


class _Decode(Dataset):
    """Item i: (i, the decoded image or None, why it failed or None); run in DataLoader workers."""

    def __init__(self, files: Sequence[Path], settings: DecodeSettings, like: Sequence[Path] | None) -> None:
        self.files, self.settings, self.like = files, settings, like

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, Tensor | None, str | None]:
        try:
            if self.like is not None:
                size, expected = image_size_of(self.files[i]), image_size_of(self.like[i])
                if size != expected:
                    sizes = "{}x{} against {}x{}".format(*size, *expected)
                    return i, None, f"{SIZE_MISMATCH} its image ({sizes}, height x width)"
            return i, self.settings.decode(self.files[i]), None
        except (OSError, RuntimeError, ValueError) as err:
            return i, None, failure_reason(err)


def decode_images(
    files: Sequence[Path],
    settings: DecodeSettings,
    cache_dir: Path,
    workers: int,
    description: str = "images",
    like: Sequence[Path] | None = None,
) -> DecodedImages:
    """The images of `files`, from the cache in `cache_dir` or decoded now (with `workers` processes and
    a progress bar) and cached there. With `like` (a file per file: a mask's image), a file whose size
    (before fitting) is not that of its `like` file fails, with a reason beginning with `SIZE_MISMATCH`."""
    key = cache_key(files, settings, like)
    array_path, index_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    if not (index_path.is_file() and array_path.is_file()):
        # one process at a time per cache (nodes sharing it): the next finds the cache the first wrote
        with folder_lock(cache_dir):
            if not (index_path.is_file() and array_path.is_file()):
                _decode_into(files, settings, array_path, index_path, workers, description, like)
    try:
        index = json.loads(index_path.read_text())
        # copy-on-write: writable for torch, the file is never changed
        array = np.load(array_path, mmap_mode="c")
        rows = torch.tensor(index["rows"], dtype=torch.int64)
        count = int(index["count"])
        if len(rows) != len(files) or array.shape[1:] != (settings.channels, *settings.size):
            raise ValueError("it does not match the files")
    except (OSError, ValueError, KeyError) as err:
        raise DataError(
            f"the image cache {array_path} is damaged ({' '.join(str(err).split())}): delete it and run again"
        ) from None
    failures = [(str(path), reason) for path, reason in index["failures"]]
    return DecodedImages(torch.from_numpy(array[:count]), rows, failures)


def _decode_into(
    files: Sequence[Path],
    settings: DecodeSettings,
    array_path: Path,
    index_path: Path,
    workers: int,
    description: str,
    like: Sequence[Path] | None,
) -> None:
    """Decodes `files` into a new `.npy` array (rows in file order, failures left out) and writes the
    index last, so a cache is complete or absent; on an error nothing is left."""
    shape = (len(files), settings.channels, *settings.size)
    temp = array_path.parent / f".{array_path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    start = time.perf_counter()
    try:
        array_path.parent.mkdir(parents=True, exist_ok=True)
        array = np.lib.format.open_memmap(temp, mode="w+", dtype=np.uint8, shape=shape)
        # reserve the space now: a full disk is an error here, not a crash while writing through the map
        with open(temp, "r+b") as file:
            os.posix_fallocate(file.fileno(), 0, os.path.getsize(temp))
        rows, failures = _decode_rows(_Decode(files, settings, like), array, workers, description)
        array.flush()
        del array
        os.replace(temp, array_path)
        with atomic_write(index_path, "w") as file:
            json.dump({"count": len(files) - len(failures), "rows": rows, "failures": failures}, file)
    except OSError as err:
        with suppress(OSError):
            temp.unlink()
        size = np.prod(shape) / 2**20
        raise DataError(
            f"cannot write the decoded images ({size:.0f} MB) into {array_path.parent}: "
            f"{write_failure(err)}; point --data.cache_dir at a folder with room"
        ) from None
    except BaseException:
        with suppress(OSError):
            temp.unlink()
        raise
    rank_zero_info(
        f"Decoded {len(files) - len(failures)} {description} in {time.perf_counter() - start:.1f} s into "
        f"{array_path} (later runs read it from there)"
    )


def _decode_rows(
    decode: _Decode, array: np.ndarray, workers: int, description: str
) -> tuple[list[int], list[tuple[str, str]]]:
    """Decodes every file into the next free row of `array`, in file order; returns each file's row (-1
    when it failed) and the failures."""
    files = decode.files
    loader = DataLoader(decode, batch_size=16, num_workers=workers, collate_fn=list)
    rows: list[int] = []
    failures: list[tuple[str, str]] = []
    with tqdm(total=len(files), desc=f"Decoding {description}", unit="img", disable=None) as bar:
        for items in loader:
            for i, image, reason in items:
                if image is None:
                    rows.append(-1)
                    failures.append((str(files[i]), reason))
                else:
                    row = len(rows) - len(failures)
                    array[row] = image.numpy()
                    rows.append(row)
            bar.update(len(items))
    return rows, failures
