"""Stopping a run whose loss became NaN or infinite, before it writes a checkpoint of broken weights."""

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor

from ae_lightning.errors import TrainingError

#: "no non-finite step yet", in the on-device record of the first one (a minimum over ranks)
_NONE = torch.iinfo(torch.int64).max


class NonFiniteLossCheck(Callback):
    """Ends training with a one-line error when the training loss or the weights become NaN or infinite.

    Every step's loss is compared on the device (no wait for it); the host reads the result once per
    `log_every_n_steps` optimizer steps (when the loggers read the loss anyway), before each validation, at
    the end of each epoch and before each checkpoint is saved, so a run stops within one logging interval
    and no checkpoint of broken weights is written: the run folder keeps the checkpoints from before. A
    validation loss (a checkpoint's `monitor`) that is not finite stops the run too, before any checkpoint
    named after it is written. Under DDP the ranks decide together (a NaN on any rank stops all).

    The CLI adds it to every run; set it with `--nonfinite_loss.stop false` to train on (a warning is shown
    once instead).

    Args:
        stop: stop the run (true), or only warn once (false).
    """

    def __init__(self, stop: bool = True) -> None:
        self.stop = stop
        self._first_bad_step: Tensor | None = None  # on the device: the first step with a non-finite loss
        self._checked_step = 0  # optimizer steps read so far
        self._warned = False

    def on_train_batch_end(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, Tensor):
            return
        if self._first_bad_step is None:
            self._first_bad_step = torch.full((), _NONE, dtype=torch.int64, device=loss.device)
        # global_step counts this call's optimizer steps: the first bad one is at most that. (A Python
        # number as clamp's bound: no copy to the device, which would make the host wait for it.)
        bad = ~torch.isfinite(loss.detach()).all()
        record = self._first_bad_step
        self._first_bad_step = torch.where(bad, record.clamp(max=trainer.global_step), record)
        every = trainer.log_every_n_steps or 1
        if trainer.global_step // every > self._checked_step // every:
            self._check(trainer, pl_module)

    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._check(trainer, pl_module)

    def on_validation_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if trainer.state.fn == "fit":
            self._check(trainer, pl_module)

    def on_validation_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Runs before the checkpoint callbacks' own `on_validation_end` (Lightning calls them last)."""
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        monitors = {cb.monitor for cb in trainer.callbacks if isinstance(cb, Checkpoint)} - {None}
        for name in sorted(monitors):
            value = trainer.callback_metrics.get(name)
            if isinstance(value, Tensor) and not torch.isfinite(value).all():
                self._report(
                    trainer, f"the validation loss {name} is {value.item()} after step {trainer.global_step}"
                )

    def on_save_checkpoint(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", checkpoint: dict[str, Any]
    ) -> None:
        # this rank's record only: a save can run in a signal handler, where the ranks are not in step
        if trainer.state.fn == "fit":
            self._check(trainer, pl_module, together=False)

    def _check(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", together: bool = True) -> None:
        """Reads the record (one wait for the device), with every rank when `together`, and stops if bad."""
        self._checked_step = trainer.global_step
        if self._first_bad_step is None:
            return
        record = self._first_bad_step
        weights_finite = torch.stack([p.detach().isfinite().all() for p in pl_module.parameters()]).all()
        # a finite loss computed before an update that broke the weights: the weights tell
        now = torch.full_like(record, trainer.global_step)
        record = torch.where(weights_finite.to(record.device), record, torch.minimum(record, now))
        first = int(trainer.strategy.reduce(record.clone(), reduce_op="min") if together else record)
        if first == _NONE:
            return
        self._first_bad_step = torch.full_like(record, _NONE)  # reported once (when not stopping)
        self._report(trainer, f"the training loss or the weights became NaN or infinite by step {first}")

    def _report(self, trainer: "pl.Trainer", what: str) -> None:
        if not self.stop:
            if not self._warned:
                rank_zero_warn(f"{what} (training goes on: --nonfinite_loss.stop false)")
                self._warned = True
            return
        folder = trainer.checkpoint_callback.dirpath if trainer.checkpoint_callback is not None else None
        kept = sorted(Path(folder).glob("*.ckpt")) if folder and Path(folder).is_dir() else []
        saved = (
            f"the checkpoints from before it are kept in {folder}" if kept else "no checkpoint was written"
        )
        raise TrainingError(
            f"{what} (epoch {trainer.current_epoch}): training stopped, {saved}. "
            "Lower the learning rate or clip gradients (--trainer.gradient_clip_val 1.0); "
            "--nonfinite_loss.stop false trains on regardless"
        )
