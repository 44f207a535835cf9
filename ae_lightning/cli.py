"""The command line: LightningCLI, with the model picked by `class_path` and fitted to the data."""

import inspect
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, TQDMProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_only

import ae_lightning.data
import ae_lightning.models
from ae_lightning.callbacks import (
    NonFiniteLossCheck,
    PredictionWriter,
    PreemptionCheckpoint,
    ProgressBar,
    SaveRunConfig,
    StepWatchdog,
)
from ae_lightning.checkpoints import SafeCheckpointIO, check_checkpoint
from ae_lightning.cluster import check_gpu_binding
from ae_lightning.data.contract import AutoencoderDataModule
from ae_lightning.errors import CheckpointError, ConfigError, TrainingError
from ae_lightning.export.trainer import AutoencoderTrainer
from ae_lightning.failures import Quiet, user_error
from ae_lightning.files import write_error
from ae_lightning.models import AutoencoderModule
from ae_lightning.multistep import link_steps_per_call, take_gradient_clipping
from ae_lightning.parser import ArgumentParser
from ae_lightning.run_folders import NewRunFolder, newest_last_checkpoint, run_root

#: exit status of a training run stopped by SIGTERM (or SIGUSR1 outside SLURM's requeue) after it saved
#: `last.ckpt`: 128 + SIGTERM, what a shell reports for a process that signal ended
PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM


@dataclass
class CommandState:
    """What one command set up, for `main` to undo if the command fails (the CLI fails in its constructor,
    so `main` has no CLI object then)."""

    new_run_folder: NewRunFolder | None = None
    trainer: Trainer | None = None


class AutoencoderCLI(LightningCLI):
    """LightningCLI for autoencoders: the datamodule tells the model its image shape and value range.

    Before anything is written it checks the `--ckpt_path` (whole and data only), the optimizer and
    scheduler arguments and resuming past `max_epochs`; a new run takes its `version_<n>` folder
    atomically. `state` records what the command set up (see `main`).
    """

    def __init__(self, *args: Any, state: CommandState | None = None, **kwargs: Any) -> None:
        self.state = state or CommandState()
        self._parsers: list[ArgumentParser] = []
        self._checked: tuple[Path, dict[str, Any]] | None = None  # the --ckpt_path file, read and checked
        super().__init__(*args, **kwargs)

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """Each parser (the main one and the subcommands') knows the classes `--model` and `--data` take
        and the other parsers' options, for its short errors (`parser.ArgumentParser`)."""
        parser = super().init_parser(**kwargs)
        if isinstance(parser, ArgumentParser):
            parser.classes = {
                "model": _classes(ae_lightning.models, AutoencoderModule),
                "data": _classes(ae_lightning.data, AutoencoderDataModule),
            }
            for other in self._parsers:
                other.siblings.append(parser)
                parser.siblings.append(other)
            self._parsers.append(parser)
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # one source of truth: the data decides the shape and range, the model is built for them
        # (as lists, the form both hold in their hparams, which Lightning requires to be equal)
        for name in ("image_shape", "value_range"):
            parser.link_arguments(
                f"data.{name}", f"model.init_args.{name}", compute_fn=list, apply_on="instantiate"
            )
        # K optimizer steps per call need K batches per training item: the model's setting sizes them
        link_steps_per_call(parser)
        # in every run: a loss that becomes NaN stops it (--nonfinite_loss.stop false trains on)
        parser.add_lightning_class_args(NonFiniteLossCheck, "nonfinite_loss")
        # under DDP: a rank that died or hangs ends the job in minutes, not at NCCL's 30-minute timeout
        parser.add_lightning_class_args(StepWatchdog, "step_watchdog")
        parser.add_argument(
            "--float32_matmul_precision",
            type=Literal["highest", "high", "medium"],
            default="highest",
            help="Precision of float32 matrix products (torch.set_float32_matmul_precision) on GPUs with "
            "TensorFloat-32 (Ampere and later): highest (full float32, torch's default), high (TF32, 10 "
            "mantissa bits, several times faster) or medium (bfloat16 inside). Convolutions follow "
            "torch.backends.cudnn.allow_tf32. No effect on a CPU.",
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Lightning's subcommands, without their `weights_only` argument (checkpoints are always read as
        data only: `checkpoints.SafeCheckpointIO`), and `export` (`export.AutoencoderTrainer.export`)."""
        commands = {name: {*skipped, "weights_only"} for name, skipped in LightningCLI.subcommands().items()}
        return {**commands, "export": {"model", "datamodule"}}

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        # before LightningCLI reads the checkpoint's hyperparameters and before any run folder is made
        checkpoint = check_checkpoint(ckpt_path) if ckpt_path else None
        if checkpoint is not None:
            self._checked = (Path(ckpt_path), checkpoint)
        if subcommand == "fit" and (ckpt_path or int(os.environ.get("SLURM_RESTART_COUNT", 0)) > 0):
            # a resumed (or SLURM-requeued) run writes into its own folder again: its config.yaml is
            # rewritten, with the ckpt_path it resumed from
            self.save_config_kwargs["overwrite"] = True
            if ckpt_path == "last":
                newest = self._continue_last_run()
                checkpoint = check_checkpoint(newest, given="last") if newest is not None else None
                if checkpoint is not None:
                    # Lightning finds this same last.ckpt itself: it reads it from the check
                    self._checked = (newest, checkpoint)
            if checkpoint is not None:
                self._check_max_epochs(checkpoint, ckpt_path)
        elif subcommand and ckpt_path == "last":
            # Lightning would look for `last` only in this command's own new run folder, find nothing and go
            # on with untrained weights: take the newest run's last.ckpt instead
            root = run_root(self.config[subcommand].trainer)
            if root is not None:
                newest = newest_last_checkpoint(root)
                if newest is None:
                    raise CheckpointError(
                        f"--ckpt_path last: no {root}/version_<n>/checkpoints/last.ckpt to {subcommand}: "
                        "train first (fit), or give the path of a checkpoint"
                    )
                self._checked = (newest, check_checkpoint(newest, given="last"))
                self.config[subcommand].ckpt_path = str(newest)
                rank_zero_info(f"--ckpt_path last: {newest}")

    def _continue_last_run(self) -> Path | None:
        """`fit --ckpt_path last` continues the newest run: the logger is pointed at the version folder whose
        `checkpoints/last.ckpt` is newest (Lightning looks for `last` only in this run's own folder, which
        would otherwise be a fresh `version_<n+1>`), and that checkpoint is returned. With no such run it
        starts afresh (None)."""
        trainer_config = self.config.fit.trainer
        root = run_root(trainer_config)
        newest = newest_last_checkpoint(root) if root is not None else None
        if newest is not None:
            trainer_config.logger.init_args.version = int(newest.parents[1].name.removeprefix("version_"))
            rank_zero_info(f"Resuming the run in {newest.parents[1]} from {newest}")
        return newest

    def _check_max_epochs(self, checkpoint: dict[str, Any], ckpt_path: str) -> None:
        """Refuses to resume a checkpoint past `max_epochs` (Lightning would fail later, with a traceback)."""
        epoch, max_epochs = checkpoint.get("epoch"), self.config.fit.trainer.get("max_epochs")
        if isinstance(epoch, int) and max_epochs not in (None, -1) and epoch > max_epochs:
            raise ConfigError(
                f"--ckpt_path {ckpt_path} was saved in epoch {epoch} (counting from 0), past "
                f"--trainer.max_epochs {max_epochs}: give a larger --trainer.max_epochs (the total number of "
                "epochs, the checkpoint's included)"
            )

    def before_instantiate_classes(self) -> None:
        """Sets the float32 matmul precision; a new run of a TensorBoard or CSV logger takes its
        `version_<n>` folder now, atomically (on global rank zero; the other ranks write nothing)."""
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        torch.set_float32_matmul_precision(config.get("float32_matmul_precision") or "highest")
        if subcommand:
            check_gpu_binding(config.trainer.get("accelerator"))
        # an export writes its own folder (--output), not a run
        if subcommand and subcommand != "export" and rank_zero_only.rank == 0:
            self.state.new_run_folder = NewRunFolder(self.config[subcommand].trainer)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer, with `callbacks.ProgressBar` (no wait for the device every step) in place of the
        progress bar Lightning adds by default (a progress bar from the config is kept),
        `callbacks.PreemptionCheckpoint` (SIGTERM saves `last.ckpt`), and checkpoints
        read and written through `SafeCheckpointIO` (unless the config sets a checkpoint plugin)."""
        # a copy: Lightning appends its defaults to the config's list
        configured = list(self._get(self.config_init, "trainer", default={}).get("callbacks") or [])
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except (MisconfigurationException, ValueError) as err:  # e.g. an accelerator this machine lacks
            raise ConfigError(f"--trainer: {' '.join(str(err).split())}") from None
        default_bar = trainer.progress_bar_callback
        if type(default_bar) is TQDMProgressBar and not any(default_bar is c for c in configured):
            trainer.callbacks[trainer.callbacks.index(default_bar)] = ProgressBar()
        # SIGTERM (and SIGUSR1) saves last.ckpt at the step's end (resume with --ckpt_path last)
        trainer.callbacks.append(PreemptionCheckpoint())
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = SafeCheckpointIO(checked=self._checked)
        self.state.trainer = trainer
        return trainer

    def before_fit(self) -> None:
        """Checks the optimizer's and scheduler's arguments by building them once (a bad `lr` would fail only
        after the run folder is written); with K steps per call the module clips gradients itself."""
        take_gradient_clipping(self.trainer, self.model)
        try:
            self.model.configure_optimizers()
        except (ValueError, TypeError, KeyError) as err:
            reason = " ".join(str(err).split())
            raise ConfigError(
                f"the optimizer or learning-rate scheduler refused its arguments: {reason}; "
                "fix --model.optimizer (or --model.lr_scheduler)"
            ) from None

    def before_predict(self) -> None:
        """`predict` writes its outputs to the run folder: a PredictionWriter with its defaults is added
        unless the config lists a prediction writer of its own (to choose other formats)."""
        if not any(isinstance(callback, BasePredictionWriter) for callback in self.trainer.callbacks):
            self.trainer.callbacks.append(PredictionWriter())


def main(args: ArgsType = None, run: bool = True) -> AutoencoderCLI:
    """Entry point of `python cli.py`: runs a subcommand, or exits with a one-line error for bad input.

    Exit status: 0 done; 1 an error the message explains (bad input, a NaN loss, a full disk); 2 a mistake
    in the arguments or config; `PREEMPTED_EXIT_CODE` (143) stopped by SIGTERM or SIGUSR1 after saving
    `last.ckpt` (resume with `fit --ckpt_path last`). A command that fails before training a step removes
    the run folder it made. With `run=False` it only parses `args` (no subcommand) and builds the trainer,
    model and datamodule.
    """
    state = CommandState()
    quiet = Quiet()
    try:
        with quiet:
            cli = AutoencoderCLI(
                AutoencoderModule,
                AutoencoderDataModule,
                trainer_class=AutoencoderTrainer,
                subclass_mode_model=True,
                subclass_mode_data=True,
                auto_configure_optimizers=False,  # the model takes its optimizer as an argument
                # config.yaml in the run's own folder (not W&B's shared save_dir), and the run config in W&B
                save_config_callback=SaveRunConfig,
                parser_class=ArgumentParser,
                args=args,
                run=run,
                state=state,
            )
    except SIGTERMException:
        sys.stderr.write(f"stopped by a signal before the end (exit status {PREEMPTED_EXIT_CODE})\n")
        sys.exit(PREEMPTED_EXIT_CODE)
    except BaseException as err:
        if state.new_run_folder is not None and (state.trainer is None or state.trainer.global_step == 0):
            state.new_run_folder.remove()
        if isinstance(err, SystemExit):  # --help, or a parse error already told (parser.ArgumentParser)
            raise
        folder = _run_folder(state)
        error = user_error(err, folder)
        if error is None and quiet.thread_error is not None:
            error = write_error(quiet.thread_error, quiet.thread_error.filename, folder)
        if error is None:
            raise
        if isinstance(error, TrainingError) and rank_zero_only.rank != 0:
            sys.exit(1)  # every rank stops together: rank zero says why
        sys.exit(f"error: {error}")
    if run:
        _finish_runs(cli.trainer)
    return cli


def _classes(module: Any, base: type) -> list[str]:
    """The classes `module` exports that derive from `base`, as `module.Name` import paths."""
    return sorted(
        f"{module.__name__}.{name}"
        for name in getattr(module, "__all__", ())
        if isinstance(value := getattr(module, name), type)
        and issubclass(value, base)
        and value is not base
        and not inspect.isabstract(value)
    )


def _finish_runs(trainer: Trainer) -> None:
    """Ends the tracked run of every logger that has one (W&B), so its files are complete and the next
    command in this process starts a run of its own instead of logging into this one."""
    for logger in trainer.loggers:
        if callable(getattr(logger, "finish", None)):
            logger.finish()


def _run_folder(state: CommandState) -> Any:
    """The folder of the command's run, for messages (None before there is one)."""
    if state.new_run_folder is not None and state.new_run_folder.folder is not None:
        return state.new_run_folder.folder
    logger = state.trainer.logger if state.trainer is not None else None
    return logger.log_dir if isinstance(logger, (TensorBoardLogger, CSVLogger)) else None
