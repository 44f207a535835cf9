"""Writing a file so that no reader ever sees part of it, and a failed write is one clear error."""

import errno
import hashlib
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

from ae_lightning.errors import WriteError

try:
    import fcntl
except ImportError:  # Windows: no locks (and no multi-node runs)
    fcntl = None  # type: ignore[assignment]

#: the lock file `folder_lock` takes in a data or cache folder
LOCK_NAME = ".ae_lightning.lock"

#: what an OSError of a write means for the user, by errno, and what to do about it
_FULL = "make room there or write the run elsewhere (--trainer.logger.init_args.save_dir)"
_LOCKED = "write the run elsewhere (--trainer.logger.init_args.save_dir) or make the folder writable"
_REASONS = {
    errno.ENOSPC: ("the disk is full", _FULL),
    errno.EDQUOT: ("the disk quota is used up", _FULL),
    errno.EROFS: ("the file system is read-only", _LOCKED),
    errno.EACCES: ("permission denied", _LOCKED),
    errno.EPERM: ("permission denied", _LOCKED),
}
#: the errnos of writes that fail for the disk or folder, not the program
WRITE_ERRNOS = frozenset(_REASONS)


def write_failure(err: OSError) -> str:
    """What an OSError of a write means, in a few words ("the disk is full")."""
    return _REASONS.get(err.errno or 0, (" ".join(str(err.strerror or err).split()), ""))[0]


def write_error(err: OSError, path: str | Path | None, folder: str | Path | None = None) -> WriteError:
    """The one-line error for a failed write of the file `path` (or, when it is unknown, of a file in
    `folder`): what went wrong, where, and what to do. Checkpoints and pictures are written atomically, so
    none is left partial."""
    reason, remedy = write_failure(err), _REASONS.get(err.errno or 0, ("", _FULL))[1]
    if path is not None:
        where = f"{Path(path).name} into {Path(path).parent}"
    else:
        where = f"into {folder}" if folder is not None else "the run's files"
    return WriteError(f"cannot write {where}: {reason}; {remedy} (no checkpoint or picture is left partial)")


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Opens a temporary file beside `path` for writing; when the block ends without an error the file is
    flushed to disk and renamed to `path` in one step, so `path` holds either its old content or all of the
    new. On an error the temporary file is removed; an OSError (disk full, read-only folder) becomes a
    WriteError naming the folder."""
    path = Path(path)
    folder = path.parent
    # hidden, and unique per writer, so two processes never write into the same temporary file
    temp = folder / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        file = open(temp, mode.replace("w", "x"), **({} if "b" in mode else {"newline": ""}))  # noqa: SIM115
    except OSError as err:
        raise write_error(err, path) from err
    try:
        with file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException as err:
        with suppress(OSError):
            temp.unlink()
        if isinstance(err, OSError):
            raise write_error(err, path) from err
        raise


@contextmanager
def folder_lock(folder: str | Path, create: bool = True) -> Iterator[None]:
    """Holds an exclusive lock on `folder` (flock on a lock file in it) while the block runs, so processes
    that prepare the same shared folder (each node's `prepare_data` in a multi-node run, or two runs started
    together) take turns: one downloads or decodes, the next finds its files. The folder is made unless not
    `create` (then a missing folder is not locked: there is nothing in it to prepare). Where no lock file
    can be made (a read-only folder), the block runs unlocked."""
    handle = None
    if fcntl is not None and (create or Path(folder).is_dir()):
        with suppress(OSError):
            Path(folder).mkdir(parents=True, exist_ok=True)
            handle = open(Path(folder) / LOCK_NAME, "a")  # noqa: SIM115
            fcntl.flock(handle, fcntl.LOCK_EX)
    try:
        yield
    finally:
        if handle is not None:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file, read in blocks (a checkpoint's, to name what was made from it)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as file:
        for block in iter(lambda: file.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def new_folder(output: str | Path, overwrite: bool) -> Iterator[Path]:
    """A hidden temporary folder beside `output` to write into; when the block ends without an error it
    replaces `output` in one rename, so `output` holds all of the new files or none. An existing `output`
    is refused (ConfigError) unless `overwrite`; an OSError becomes a WriteError naming the folder."""
    from ae_lightning.errors import ConfigError

    output = Path(output)
    if output.exists() and not overwrite:
        raise ConfigError(f"--output {output} exists: give another folder, or --overwrite true to replace it")
    temp = output.parent / f".{output.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        temp.mkdir(parents=True)
        yield temp
        if output.exists():
            shutil.rmtree(output)
        os.replace(temp, output)
    except OSError as err:
        raise write_error(err, None, output.parent) from err
    finally:
        with suppress(OSError):
            shutil.rmtree(temp)
