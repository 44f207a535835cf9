"""Checks of IDX files (the MNIST file format) that turn a truncated or corrupt file into a clear error."""

import struct
from math import prod
from pathlib import Path

from ae_lightning.errors import DataError

_UNSIGNED_BYTE = 0x08


def check_idx_file(path: Path, ndim: int) -> tuple[int, ...]:
    """Returns the dimensions an IDX file of unsigned bytes announces, after checking that its size matches.

    Raises DataError naming the file, what is wrong and what to do when the header is not that of an IDX
    file of `ndim` dimensions, or the file is shorter or longer than its header says.
    """
    with path.open("rb") as file:
        header = file.read(4 + 4 * ndim)
    remedy = f"delete {path.name} (and {path.name}.gz if it is corrupt too) and prepare the data again"
    return idx_dims(header, path.stat().st_size, ndim, str(path), remedy)


def idx_dims(header: bytes, size: int, ndim: int, name: str, remedy: str) -> tuple[int, ...]:
    """The dimensions announced by the `header` (the first bytes) of IDX data of `size` bytes in all,
    checked as `check_idx_file` does; `name` and `remedy` go into the error."""
    header = header[: 4 + 4 * ndim]
    if len(header) < 4 + 4 * ndim:
        raise DataError(f"{name} is truncated: {size} bytes, too short for an IDX header; {remedy}")
    zeros, dtype, file_ndim = header[:2], header[2], header[3]
    if zeros != b"\0\0" or dtype != _UNSIGNED_BYTE or file_ndim != ndim:
        raise DataError(
            f"{name} is not an IDX file of {ndim}-d unsigned bytes (its header starts {header[:4].hex()}, "
            f"expected 000008{ndim:02x}): the file is corrupt or not MNIST data; {remedy}"
        )
    dims = struct.unpack(f">{ndim}I", header[4:])
    expected = len(header) + prod(dims)
    if size != expected:
        shape = "x".join(map(str, dims))
        problem = "truncated" if size < expected else "longer than its header says"
        raise DataError(
            f"{name} is {problem}: its header announces {shape} values ({expected} bytes), "
            f"the file holds {size} bytes; {remedy}"
        )
    return dims


def check_split(images: Path, labels: Path) -> None:
    """Checks an (images, labels) pair of IDX files: each intact, 28x28 images, one label per image."""
    image_dims = check_idx_file(images, ndim=3)
    (num_labels,) = check_idx_file(labels, ndim=1)
    if image_dims[1:] != (28, 28):
        raise DataError(f"{images} holds {image_dims[1]}x{image_dims[2]} images, expected 28x28")
    if image_dims[0] != num_labels:
        raise DataError(
            f"{images} holds {image_dims[0]} images but {labels} holds {num_labels} labels: "
            "the files come from different datasets or one is damaged"
        )
