"""`--ckpt_path`: the file checked (whole, data only) before anything reads it, and `last` resolved to the
newest run's `last.ckpt` (for `fit`: continuing that run in its own folder)."""

import os
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from ae_lightning.checkpoints import check_checkpoint
from ae_lightning.errors import CheckpointError, ConfigError
from ae_lightning.runs import newest_last_checkpoint, run_root

#: a checkpoint file read and checked by the CLI, and what it holds
Checked = tuple[Path, dict[str, Any]]


def resolve_checkpoint(config: Namespace, subcommand: str) -> tuple[Checked | None, bool]:
    """Checks the command's `--ckpt_path` before LightningCLI reads the checkpoint's hyperparameters and
    before any run folder is made, and resolves `last`; returns (the checked file, or None; whether this
    fit continues a run in its own folder, so that its config.yaml is rewritten)."""
    command = config[subcommand]
    ckpt_path = command.get("ckpt_path")
    checkpoint = check_checkpoint(ckpt_path) if ckpt_path else None
    checked = (Path(ckpt_path), checkpoint) if checkpoint is not None else None
    if subcommand == "fit" and (ckpt_path or int(os.environ.get("SLURM_RESTART_COUNT", 0)) > 0):
        # a resumed (or SLURM-requeued) run writes into its own folder again, with the ckpt_path it resumed
        if ckpt_path == "last":
            newest = continue_last_run(command.trainer)
            checkpoint = check_checkpoint(newest, given="last") if newest is not None else None
            if checkpoint is not None:
                # Lightning finds this same last.ckpt itself: it reads it from the check
                checked = (newest, checkpoint)
        if checkpoint is not None:
            check_max_epochs(checkpoint, ckpt_path, command.trainer.get("max_epochs"))
        return checked, True
    if ckpt_path == "last":
        # Lightning would look for `last` only in this command's own new run folder, find nothing and go on
        # with untrained weights: take the newest run's last.ckpt instead
        root = run_root(command.trainer)
        if root is not None:
            newest = newest_last_checkpoint(root)
            if newest is None:
                raise CheckpointError(
                    f"--ckpt_path last: no {root}/version_<n>/checkpoints/last.ckpt to {subcommand}: "
                    "train first (fit), or give the path of a checkpoint"
                )
            checked = (newest, check_checkpoint(newest, given="last"))
            command.ckpt_path = str(newest)
            rank_zero_info(f"--ckpt_path last: {newest}")
    return checked, False


def continue_last_run(trainer_config: Namespace) -> Path | None:
    """`fit --ckpt_path last` continues the newest run: the logger is pointed at the version folder whose
    `checkpoints/last.ckpt` is newest (Lightning looks for `last` only in this run's own folder, which would
    otherwise be a fresh `version_<n+1>`), and that checkpoint is returned. With no such run it starts
    afresh (None)."""
    root = run_root(trainer_config)
    newest = newest_last_checkpoint(root) if root is not None else None
    if newest is not None:
        trainer_config.logger.init_args.version = int(newest.parents[1].name.removeprefix("version_"))
        rank_zero_info(f"Resuming the run in {newest.parents[1]} from {newest}")
    return newest


def check_max_epochs(checkpoint: dict[str, Any], ckpt_path: str, max_epochs: int | None) -> None:
    """Refuses to resume a checkpoint past `max_epochs` (Lightning would fail later, with a traceback)."""
    epoch = checkpoint.get("epoch")
    if isinstance(epoch, int) and max_epochs not in (None, -1) and epoch > max_epochs:
        raise ConfigError(
            f"--ckpt_path {ckpt_path} was saved in epoch {epoch} (counting from 0), past "
            f"--trainer.max_epochs {max_epochs}: give a larger --trainer.max_epochs (the total number of "
            "epochs, the checkpoint's included)"
        )
