"""Writing a file so that no reader ever sees part of it, and a failed write is one clear error."""

import errno
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

from ae_lightning.errors import WriteError

#: what an OSError of a write means for the user, by errno
_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


def write_error(err: OSError, path: str | Path | None) -> WriteError:
    """The one-line error for a failed write of `path` (None: unknown): what went wrong, where, and what to
    do."""
    reason = _REASONS.get(err.errno or 0) or " ".join(str(err.strerror or err).split())
    what = "the run's files" if path is None else f"{Path(path).name} into {Path(path).parent}"
    return WriteError(
        f"cannot write {what}: {reason} (no partial file was left). Make room there, or write the run "
        "elsewhere (--trainer.logger.init_args.save_dir)"
    )


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
