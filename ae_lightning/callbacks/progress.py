"""A progress bar that shows the training loss without making the host wait for the device every step."""

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar

from ae_lightning.errors import ConfigError


class ProgressBar(TQDMProgressBar):
    """Lightning's TQDM progress bar, with `train/loss` read every `loss_every_n_steps` optimizer steps.

    Lightning turns each metric logged with `prog_bar=True` into a Python number after every training step,
    so on a GPU the host waits for the device once a step and cannot queue the next one. The models log
    `train/*` without `prog_bar`, and this bar reads the step's loss (the `loss` the training step returns)
    only when the shown value is due: at the first step, whenever `loss_every_n_steps` more optimizer
    steps have passed, and at the last step of an epoch. The `AutoencoderCLI` puts it in place of
    Lightning's default bar; a progress bar listed in the config's callbacks is used as it is.

    Args:
        refresh_rate: redraw the bar every this many batches (as `TQDMProgressBar`).
        process_position: as `TQDMProgressBar`.
        leave: keep each epoch's bar on screen (as `TQDMProgressBar`).
        loss_every_n_steps: how often the shown `train/loss` is updated, in optimizer steps; default: the
            trainer's `log_every_n_steps` (the steps at which the loggers read it anyway).
    """

    def __init__(
        self,
        refresh_rate: int = 1,
        process_position: int = 0,
        leave: bool = False,
        loss_every_n_steps: int | None = None,
    ) -> None:
        if loss_every_n_steps is not None and loss_every_n_steps < 1:
            raise ConfigError(f"loss_every_n_steps must be at least 1 step, got {loss_every_n_steps}")
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=leave)
        self.loss_every_n_steps = loss_every_n_steps
        self._loss: float | None = None
        self._loss_step = 0

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        every = self.loss_every_n_steps or trainer.log_every_n_steps or 1
        step = trainer.global_step
        due = (
            self._loss is None
            or step // every > self._loss_step // every
            or batch_idx + 1 == self.total_train_batches
        )
        if loss is not None and self.is_enabled and due:
            self._loss, self._loss_step = float(loss), step  # the one wait for the device
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        if self._loss is not None:
            metrics["train/loss"] = self._loss
        return metrics
