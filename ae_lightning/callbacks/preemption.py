"""Saving `last.ckpt` when a run is stopped by SIGTERM (preemption, `scancel`, `kill`)."""

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from ae_lightning.callbacks.sample_grid import SampleGridCheckpoint, grid_path


class PreemptionCheckpoint(Callback):
    """On SIGTERM, saves `last.ckpt` (mid-epoch) in the folder of every checkpoint callback that keeps a
    `last` one (with its grid, for a `SampleGridCheckpoint`), so that `fit --ckpt_path last` continues the
    run. Lightning raises SIGTERMException on every rank at the same step, so the collective save is safe;
    other exceptions (a crashed rank) save nothing, as a collective save could then wait forever for the
    missing rank. The CLI adds it to every run.
    """

    def on_exception(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException
    ) -> None:
        fitting = trainer.state.fn == TrainerFn.FITTING
        if not isinstance(exception, SIGTERMException) or trainer.sanity_checking or not fitting:
            return
        for callback in trainer.checkpoint_callbacks:
            if (
                not isinstance(callback, ModelCheckpoint)
                or not callback.save_last
                or callback.dirpath is None
            ):
                continue
            path = callback.format_checkpoint_name({}, callback.CHECKPOINT_NAME_LAST)
            callback.last_model_path = path  # before the save, which holds the callback's state
            trainer.save_checkpoint(path)
            if isinstance(callback, SampleGridCheckpoint) and trainer.is_global_zero:
                callback.write_grid(trainer, grid_path(path))
            rank_zero_info(f"Stopped by SIGTERM: saved {path}; resume with --ckpt_path last")
