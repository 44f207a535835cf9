"""Where a run's files go, defined once: the `<save_dir>/<name>/version_<n>/` folder of a run (the one
checkpoints, config.yaml, pictures and predictions go to), the newest run of a config, and taking the next
version for a new run atomically, so that two commands started at once never share a folder."""

import os
import re
import shutil
from contextlib import suppress
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from jsonargparse import Namespace
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from ae_lightning.lazy import import_object

_VERSION = re.compile(r"version_(\d+)")


def run_root(trainer_config: Namespace) -> Path | None:
    """`<save_dir>/<name>` of the config's logger, which holds its `version_<n>` run folders; None for
    loggers without such folders or with the version set (in the config or on the command line)."""
    logger = trainer_config.get("logger")
    init_args = logger.get("init_args") if isinstance(logger, Namespace) else None
    if init_args is None or init_args.get("version") is not None or init_args.get("save_dir") is None:
        return None
    return Path(init_args.save_dir) / (init_args.get("name") or "")


def newest_last_checkpoint(root: Path) -> Path | None:
    """The newest `version_<n>/checkpoints/last.ckpt` under `root`, if any."""
    lasts = [
        path
        for path in root.glob("version_*/checkpoints/last.ckpt")
        if path.is_file() and _VERSION.fullmatch(path.parents[1].name)
    ]
    return max(lasts, key=lambda path: path.stat().st_mtime) if lasts else None


class NewRunFolder:
    """The `version_<n>` folder of a new run of a TensorBoard or CSV logger, taken before the logger is
    built: the first free n from one above the highest existing, made with one `mkdir` that fails if
    another command took it first (then the next n is tried), and written into the logger's config.

    `remove()` takes the folder back (with the parents this made) when the command fails before the run
    has produced anything: it then holds only what setting up wrote (config.yaml, an events file).
    """

    def __init__(self, trainer_config: Namespace) -> None:
        self.folder: Path | None = None
        self._made: Path | None = None  # the outermost folder this made
        logger = trainer_config.get("logger")
        root = run_root(trainer_config)
        if root is None or not _has_version_folders(logger.class_path):
            return
        self._made = next((p for p in reversed([root, *root.parents]) if not p.exists()), None)
        root.mkdir(parents=True, exist_ok=True)
        versions = [int(m[1]) for p in root.iterdir() if (m := _VERSION.fullmatch(p.name)) and p.is_dir()]
        version = max(versions, default=-1) + 1
        while True:
            try:
                (root / f"version_{version}").mkdir()
                break
            except FileExistsError:
                version += 1
        self.folder = root / f"version_{version}"
        self._made = self._made or self.folder
        logger.init_args.version = version

    def remove(self) -> None:
        """Removes the folder unless it holds a checkpoint, and the parents this made if they are empty
        (another command may have started a run in them meanwhile)."""
        if self._made is None or self.folder is None or any(self.folder.rglob("*.ckpt")):
            return
        shutil.rmtree(self.folder, ignore_errors=True)
        folder = self.folder
        while folder != self._made and self._made in folder.parents:
            folder = folder.parent
            with suppress(OSError):
                folder.rmdir()
        self._made = None


def _has_version_folders(class_path: str) -> bool:
    cls = import_object(class_path)
    return isinstance(cls, type) and issubclass(cls, (TensorBoardLogger, CSVLogger))


def logger_folder(logger: Any, default_root_dir: str) -> str:
    """The folder of a run of `logger`, where ModelCheckpoint puts `checkpoints/`: `save_dir/name/version`.

    For TensorBoard and CSV loggers that is their `log_dir`; for others (W&B) Lightning's `trainer.log_dir`
    is the logger's `save_dir`, shared by every run, so a second run would find the first one's config
    there. Without a logger, `default_root_dir`.
    """
    if logger is None:
        return default_root_dir
    if isinstance(logger, (TensorBoardLogger, CSVLogger)):
        return logger.log_dir
    version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
    return os.path.join(logger.save_dir or default_root_dir, str(logger.name), version)


def run_folder(trainer: "pl.Trainer") -> str:
    """The folder of this run (`logger_folder` of the first logger), rank zero's on every rank: a
    collective, call it on every rank."""
    logger = trainer.loggers[0] if trainer.loggers else None
    return trainer.strategy.broadcast(logger_folder(logger, trainer.default_root_dir))
