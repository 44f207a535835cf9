"""The command line: LightningCLI, with the model picked by `class_path` and fitted to the data."""

import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, TQDMProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from ae_lightning.callbacks import PredictionWriter, ProgressBar, SaveRunConfig
from ae_lightning.checkpoints import SafeCheckpointIO, check_checkpoint
from ae_lightning.errors import AELightningError, CheckpointError, ConfigError
from ae_lightning.models import AutoencoderBase


class AutoencoderCLI(LightningCLI):
    """LightningCLI for autoencoders: the datamodule tells the model its image shape and value range."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # one source of truth: the data decides the shape and range, the model is built for them
        # (as lists, the form both hold in their hparams, which Lightning requires to be equal)
        for name in ("image_shape", "value_range"):
            parser.link_arguments(
                f"data.{name}", f"model.init_args.{name}", compute_fn=list, apply_on="instantiate"
            )
        # K optimizer steps per call need K batches per training item: the model's setting sizes them
        parser.link_arguments("model.init_args.steps_per_call", "data.init_args.steps_per_call")

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        # before LightningCLI reads the checkpoint's hyperparameters and before any run folder is made
        checkpoint = check_checkpoint(ckpt_path) if ckpt_path else None
        if subcommand == "fit" and (ckpt_path or int(os.environ.get("SLURM_RESTART_COUNT", 0)) > 0):
            # a resumed (or SLURM-requeued) run writes into its own folder again: its config.yaml is
            # rewritten, with the ckpt_path it resumed from
            self.save_config_kwargs["overwrite"] = True
            if ckpt_path == "last":
                newest = self._continue_last_run(self.config.fit.trainer)
                checkpoint = check_checkpoint(newest, given="last") if newest is not None else None
            if checkpoint is not None:
                self._check_max_epochs(checkpoint, self.config.fit.trainer, ckpt_path)
        elif subcommand and ckpt_path == "last":
            # Lightning would look for `last` only in this command's own new run folder, find nothing and go
            # on with untrained weights: take the newest run's last.ckpt instead
            run_root = self._run_root(self.config[subcommand].trainer)
            if run_root is not None:
                newest = self._newest_last_checkpoint(run_root)
                if newest is None:
                    raise CheckpointError(
                        f"--ckpt_path last: no {run_root}/version_<n>/checkpoints/last.ckpt to {subcommand}: "
                        "train first (fit), or give the path of a checkpoint"
                    )
                check_checkpoint(newest, given="last")
                self.config[subcommand].ckpt_path = str(newest)
                rank_zero_info(f"--ckpt_path last: {newest}")

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Lightning's subcommands, without their `weights_only` argument: checkpoints are always read as
        data only (`checkpoints.SafeCheckpointIO`)."""
        return {name: {*skipped, "weights_only"} for name, skipped in LightningCLI.subcommands().items()}

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer, with `callbacks.ProgressBar` (no wait for the device every step) in place of the
        progress bar Lightning adds by default (a progress bar from the config is kept), and checkpoints
        read and written through `SafeCheckpointIO` (unless the config sets a checkpoint plugin)."""
        # a copy: Lightning appends its defaults to the config's list
        configured = list(self._get(self.config_init, "trainer", default={}).get("callbacks") or [])
        trainer = super().instantiate_trainer(**kwargs)
        default_bar = trainer.progress_bar_callback
        if type(default_bar) is TQDMProgressBar and not any(default_bar is c for c in configured):
            trainer.callbacks[trainer.callbacks.index(default_bar)] = ProgressBar()
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = SafeCheckpointIO()
        return trainer

    def before_predict(self) -> None:
        """`predict` writes its outputs to the run folder: a PredictionWriter with its defaults is added
        unless the config lists a prediction writer of its own (to choose other formats)."""
        if not any(isinstance(callback, BasePredictionWriter) for callback in self.trainer.callbacks):
            self.trainer.callbacks.append(PredictionWriter())

    @staticmethod
    def _run_root(trainer_config: Namespace) -> Path | None:
        """`<save_dir>/<name>` of the config's logger, which holds its `version_<n>` run folders; None for
        loggers without such folders or with the version set on the command line."""
        logger = trainer_config.get("logger")
        init_args = logger.get("init_args") if isinstance(logger, Namespace) else None
        if init_args is None or init_args.get("version") is not None or "save_dir" not in init_args:
            return None
        return Path(init_args.save_dir) / (init_args.get("name") or "")

    @staticmethod
    def _newest_last_checkpoint(run_root: Path) -> Path | None:
        """The newest `version_<n>/checkpoints/last.ckpt` under `run_root`, if any."""
        lasts = [
            path
            for path in run_root.glob("version_*/checkpoints/last.ckpt")
            if path.is_file() and re.fullmatch(r"version_\d+", path.parents[1].name)
        ]
        return max(lasts, key=lambda path: path.stat().st_mtime) if lasts else None

    @classmethod
    def _continue_last_run(cls, trainer_config: Namespace) -> Path | None:
        """`fit --ckpt_path last` continues the newest run: the logger is pointed at the version folder whose
        `checkpoints/last.ckpt` is newest (Lightning looks for `last` only in this run's own folder, which
        would otherwise be a fresh `version_<n+1>`), and that checkpoint is returned. With no such run it
        starts afresh (None)."""
        run_root = cls._run_root(trainer_config)
        newest = cls._newest_last_checkpoint(run_root) if run_root is not None else None
        if newest is not None:
            trainer_config.logger.init_args.version = int(newest.parents[1].name.removeprefix("version_"))
            rank_zero_info(f"Resuming the run in {newest.parents[1]} from {newest}")
        return newest

    @staticmethod
    def _check_max_epochs(checkpoint: dict[str, Any], trainer_config: Namespace, ckpt_path: str) -> None:
        """Refuses to resume a checkpoint past `max_epochs` (Lightning would fail later, with a traceback)."""
        epoch, max_epochs = checkpoint.get("epoch"), trainer_config.get("max_epochs")
        if isinstance(epoch, int) and max_epochs not in (None, -1) and epoch > max_epochs:
            raise ConfigError(
                f"--ckpt_path {ckpt_path} was saved in epoch {epoch} (counting from 0), past "
                f"--trainer.max_epochs {max_epochs}: give a larger --trainer.max_epochs (the total number of "
                "epochs, the checkpoint's included)"
            )


def main(args: ArgsType = None, run: bool = True) -> AutoencoderCLI:
    """Entry point of `python cli.py`: runs a subcommand, or exits with a one-line error for bad input.

    With `run=False` it only parses `args` (no subcommand) and builds the trainer, model and datamodule.
    """
    # Lightning 2.6 calls a torch pytree API that newer torch deprecates, warning on every run
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    try:
        cli = AutoencoderCLI(
            AutoencoderBase,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            auto_configure_optimizers=False,  # the model takes its optimizer as an argument
            # config.yaml in the run's own folder (not W&B's shared save_dir), and the run config in W&B
            save_config_callback=SaveRunConfig,
            args=args,
            run=run,
        )
    except Exception as err:
        user_error = _user_error(err)
        if user_error is None:
            raise
        sys.exit(f"error: {user_error}")
    if run:
        _finish_runs(cli.trainer)
    return cli


def _finish_runs(trainer: Trainer) -> None:
    """Ends the tracked run of every logger that has one (W&B), so its files are complete and the next
    command in this process starts a run of its own instead of logging into this one."""
    for logger in trainer.loggers:
        if callable(getattr(logger, "finish", None)):
            logger.finish()


def _user_error(err: BaseException | None) -> AELightningError | None:
    """The AELightningError that `err` is or was directly caused by (jsonargparse re-raises errors from
    instantiating a class as the cause of its own), if any."""
    while err is not None:
        if isinstance(err, AELightningError):
            return err
        err = err.__cause__
    return None
