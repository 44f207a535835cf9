"""Running one command: its exit status, and the one-line error of a failure a user can act on."""

import signal
import sys
from pathlib import Path

from lightning.pytorch.cli import ArgsType
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from ae_lightning.callbacks import SaveRunConfig
from ae_lightning.cli.app import AutoencoderCLI, CommandState
from ae_lightning.cli.failures import Quiet, user_error
from ae_lightning.cli.parser import ArgumentParser
from ae_lightning.data.contract import AutoencoderDataModule
from ae_lightning.errors import TrainingError
from ae_lightning.export.trainer import AutoencoderTrainer
from ae_lightning.files import write_error
from ae_lightning.loggers import finish_runs
from ae_lightning.models import AutoencoderModule
from ae_lightning.runs import logger_folder

#: exit status of a training run stopped by SIGTERM (or SIGUSR1 outside SLURM's requeue) after it saved
#: `last.ckpt`: 128 + SIGTERM, what a shell reports for a process that signal ended
PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM


def main(args: ArgsType = None, run: bool = True) -> AutoencoderCLI:
    """Runs a LightningCLI subcommand, or exits with a one-line error for bad input.

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
        folder = _failed_run_folder(state)
        error = user_error(err, folder)
        if error is None and quiet.thread_error is not None:
            error = write_error(quiet.thread_error, quiet.thread_error.filename, folder)
        if error is None:
            raise
        if isinstance(error, TrainingError) and rank_zero_only.rank != 0:
            sys.exit(1)  # every rank stops together: rank zero says why
        sys.exit(f"error: {error}")
    if run:
        finish_runs(cli.trainer)
    return cli


def _failed_run_folder(state: CommandState) -> Path | str | None:
    """The folder of the failed command's run, for messages (None before there is one, or for a logger
    whose folder is made later)."""
    if state.new_run_folder is not None and state.new_run_folder.folder is not None:
        return state.new_run_folder.folder
    trainer = state.trainer
    if trainer is None or not isinstance(trainer.logger, (TensorBoardLogger, CSVLogger)):
        return None
    return logger_folder(trainer.logger, trainer.default_root_dir)
