"""How a failed command is told: the one-line error a user can act on, found in the chain of exceptions,
and what the command keeps quiet about while it runs."""

import logging
import threading
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from ae_lightning.errors import AELightningError, ConfigError, DeviceMemoryError
from ae_lightning.files import WRITE_ERRNOS, write_error


class Quiet:
    """While a command runs: no Lightning tip about its cloud logger, no warning about a torch API that
    Lightning 2.6 calls, and an OSError of a background writer thread (TensorBoard's, on a full disk) is
    kept for the one-line error instead of printed as a traceback (the main thread fails at its next write
    to the same file). Everything is as before when the command ends."""

    def __init__(self) -> None:
        self.thread_error: OSError | None = None
        self._previous_hook = threading.excepthook
        self._logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
        self._warnings = warnings.catch_warnings()

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip: For seamless cloud logging")

    def _thread_hook(self, hook_args: Any) -> None:
        err = hook_args.exc_value
        if isinstance(err, OSError) and err.errno in WRITE_ERRNOS:
            self.thread_error = self.thread_error or err
            return
        self._previous_hook(hook_args)

    def __enter__(self) -> "Quiet":
        self._logger.addFilter(self)
        threading.excepthook = self._thread_hook
        self._warnings.__enter__()
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._warnings.__exit__(*exc_info)
        self._logger.removeFilter(self)
        threading.excepthook = self._previous_hook


def user_error(err: BaseException | None, folder: str | Path | None = None) -> AELightningError | None:
    """The AELightningError that `err` is or was caused by or raised while handling (jsonargparse re-raises
    errors from instantiating a class as the cause of its own; Lightning's clean-up after an error can fail
    in turn), the one-line WriteError of an OSError of a full disk or an unwritable folder, or a
    DeviceMemoryError for torch's out-of-memory error."""
    seen = set()
    chain = []
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__ or err.__context__
    for link in chain:
        if isinstance(link, AELightningError):
            return link
    for link in chain:  # Lightning's own word for an argument that cannot work
        if isinstance(link, MisconfigurationException):
            return ConfigError(" ".join(str(link).split()))
    for link in chain:
        if isinstance(link, OSError) and link.errno in WRITE_ERRNOS:
            return write_error(link, link.filename, folder)
    for link in chain:
        if isinstance(link, torch.OutOfMemoryError) or (
            isinstance(link, RuntimeError) and "DefaultCPUAllocator: not enough memory" in str(link)
        ):
            return out_of_memory(link)
    return None


def out_of_memory(err: BaseException) -> DeviceMemoryError:
    """The one line for torch's out-of-memory error (its first sentence, then what to lower)."""
    message = " ".join(str(err).split())
    message = message.split("DefaultCPUAllocator: ")[-1]  # the CPU's, after its source location
    first = ". ".join(message.split(". ")[:2]).rstrip(".")
    return DeviceMemoryError(
        f"out of memory ({first}): lower --data.batch_size, keep the data off the GPU with --data.resident "
        "false, or train in bfloat16 (--config configs/trainer/bf16.yaml); fewer --model.nll_samples or a "
        "smaller model also help"
    )
