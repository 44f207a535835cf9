"""Reading and writing checkpoints safely: a file is checked whole before it is read, read as data only
(never as code), and written atomically.

Every checkpoint this package opens goes through `read_checkpoint`: the CLI's check of `--ckpt_path`
(`last` included), Lightning's own loading at fit/validate/test/predict (through `SafeCheckpointIO`, which
the CLI installs) and `AutoencoderModule.load_from_checkpoint` (models/checkpointing.py).
"""

import io
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem

from ae_lightning.errors import CheckpointError
from ae_lightning.files import atomic_write

#: values of `ckpt_path` that Lightning resolves itself rather than reading as a file
LIGHTNING_CKPT_KEYWORDS = ("best", "last", "hpc", "registry")


def is_keyword(ckpt_path: str | Path) -> bool:
    """Whether `ckpt_path` is one of Lightning's names (`last`, `best`, ...) rather than a file."""
    return str(ckpt_path) in LIGHTNING_CKPT_KEYWORDS or str(ckpt_path).startswith("registry:")


def read_checkpoint(
    source: str | Path | IO[bytes], map_location: Any = "cpu", name: str | None = None
) -> dict[str, Any]:
    """The checkpoint at `source`, after checking that it is whole and holds only data.

    Raises CheckpointError, in one line naming the file, when it is missing, not the zip archive
    `torch.save` writes, damaged (a CRC of the archive does not match: truncated or flipped bytes), holds
    objects other than tensors and plain containers (which could run code when unpickled: it is only ever
    unpickled as data, `weights_only=True`), or is not a Lightning checkpoint.
    """
    name = name or f"checkpoint {source}"
    buffer = checkpoint_bytes(source, name)
    try:
        checkpoint = torch.load(buffer, map_location=map_location, weights_only=True)
    except Exception as err:  # UnpicklingError for code, RuntimeError and others for broken content
        message = " ".join(str(err).split())
        blocked = re.search(r"(?:unsupported|Unsupported global:) GLOBAL (\S+)", message)
        if blocked:
            raise CheckpointError(
                f"{name} holds objects other than tensors and plain data ({blocked[1]}), which could run "
                "code when read: ae_lightning did not write it and will not read it; use a run's checkpoint"
            ) from None
        raise CheckpointError(
            f"{name} is not a readable checkpoint (corrupt, or not a PyTorch file): {message}"
        ) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"{name} is a PyTorch file but not a Lightning checkpoint (it has no 'state_dict' entry)"
        )
    return checkpoint


def checkpoint_bytes(source: str | Path | IO[bytes], name: str | None = None) -> IO[bytes]:
    """The whole of `source` (a path, a remote URL or an open file), read once, at its start, after
    checking that it is a zip archive whose every member matches its CRC (see `read_checkpoint`)."""
    name = name or f"checkpoint {source}"
    if isinstance(source, str) and "://" in source:  # a remote file (s3://, gs://, ...): read it whole
        with get_filesystem(source).open(source, "rb") as remote:
            source = io.BytesIO(remote.read())
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(
                f"{name}: no such file"
                + (" (it is a folder)" if path.is_dir() else "")
                + ". A run's checkpoints are in runs/<name>/version_<n>/checkpoints/."
            )
        # one read: the archive's checks and the unpickling both use these bytes
        source = io.BytesIO(path.read_bytes())
    _check_archive(source, name)
    source.seek(0)
    return source


def _check_archive(file: IO[bytes], name: str) -> None:
    """Raises CheckpointError unless `file` is a zip archive whose every member matches its CRC."""
    if not zipfile.is_zipfile(file):
        raise CheckpointError(
            f"{name} is not a readable checkpoint: it is not the zip archive torch.save writes "
            "(the file is truncated, corrupt, or not a checkpoint)"
        )
    try:
        with zipfile.ZipFile(file) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise CheckpointError(
            f"{name} is damaged ({' '.join(str(err).split())}): use another checkpoint"
        ) from err
    if damaged is not None:
        raise CheckpointError(
            f"{name} is damaged: its part {damaged} does not match its checksum (the file was changed or cut "
            "after it was written); use another checkpoint, e.g. an earlier one of the run"
        )


def check_checkpoint(ckpt_path: str | Path, given: str | None = None) -> dict[str, Any] | None:
    """Checks a `--ckpt_path` (see `read_checkpoint`) and returns the checkpoint; None for Lightning's
    names (`last`, `best`, ...), which Lightning resolves to a file later (and reads through
    `SafeCheckpointIO`). `given`: what the user typed, when `ckpt_path` is the file it was resolved to."""
    if is_keyword(ckpt_path):
        return None
    name = f"--ckpt_path {ckpt_path}" if given is None else f"--ckpt_path {given} ({ckpt_path})"
    return read_checkpoint(ckpt_path, name=name)


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint reading and writing, made safe: reads go through `read_checkpoint` (whole,
    data only, `weights_only` is always true), writes go to a temporary file in the same folder that is
    renamed once complete, so a full disk or a kill mid-write leaves no truncated checkpoint.

    `checked`: a (path, checkpoint) the CLI has read and checked already; the first load of that path, if
    the file is unchanged since, returns it instead of reading the file a second time.
    """

    def __init__(self, checked: tuple[Path, dict[str, Any]] | None = None) -> None:
        super().__init__()
        self._checked = None
        if checked is not None:
            path, checkpoint = checked
            self._checked = (_identity(path), checkpoint)

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            # remote storage: Lightning's own transactional write
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_write(path) as file:
            torch.save(checkpoint, file)

    def load_checkpoint(
        self,
        path: Any,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        if weights_only is False:
            raise CheckpointError(
                "checkpoints are read as data only here (weights_only cannot be turned off)"
            )
        if self._checked is not None and "://" not in str(path) and self._checked[0] == _identity(path):
            checkpoint, self._checked = self._checked[1], None
            return checkpoint
        return read_checkpoint(path, map_location=map_location)


def _identity(path: Any) -> tuple[Any, ...] | None:
    """What tells a file apart from another, or from itself changed: (real path, size, mtime)."""
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return (Path(path).resolve(), stat.st_size, stat.st_mtime_ns)
