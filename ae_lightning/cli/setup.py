"""What the CLI adds to the trainer and checks of the model before a command runs."""

from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, TQDMProgressBar

from ae_lightning.callbacks import PredictionWriter, PreemptionCheckpoint, ProgressBar
from ae_lightning.checkpoints import SafeCheckpointIO
from ae_lightning.cli.resume import Checked
from ae_lightning.errors import ConfigError
from ae_lightning.models import AutoencoderModule
from ae_lightning.models.optimization import check_precision
from ae_lightning.multistep import take_gradient_clipping


def equip_trainer(trainer: Trainer, configured_callbacks: list[Any], checked: Checked | None) -> None:
    """`callbacks.ProgressBar` (no wait for the device every step) in place of the progress bar Lightning
    adds by default (a progress bar from the config is kept), `callbacks.PreemptionCheckpoint` (SIGTERM and
    SIGUSR1 save `last.ckpt` at a step's end), and checkpoints read and written through `SafeCheckpointIO`
    (unless the config sets a checkpoint plugin; it reuses the `--ckpt_path` file the CLI checked)."""
    default_bar = trainer.progress_bar_callback
    if type(default_bar) is TQDMProgressBar and not any(default_bar is c for c in configured_callbacks):
        trainer.callbacks[trainer.callbacks.index(default_bar)] = ProgressBar()
    trainer.callbacks.append(PreemptionCheckpoint())
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = SafeCheckpointIO(checked=checked)


def prepare_fit(trainer: Trainer, model: LightningModule) -> None:
    """Checks the optimizer's and scheduler's arguments by building them once (a bad `lr` would fail only
    after the run folder is written); with K steps per call the module clips gradients itself."""
    take_gradient_clipping(trainer, model)
    if isinstance(model, AutoencoderModule):
        check_precision(trainer, model.model)
    try:
        model.configure_optimizers()
    except (ValueError, TypeError, KeyError) as err:
        reason = " ".join(str(err).split())
        raise ConfigError(
            f"the optimizer or learning-rate scheduler refused its arguments: {reason}; "
            "fix --model.optimizer (or --model.lr_scheduler)"
        ) from None


def prepare_predict(trainer: Trainer) -> None:
    """`predict` writes its outputs to the run folder: a PredictionWriter with its defaults is added unless
    the config lists a prediction writer of its own (to choose other formats)."""
    if not any(isinstance(callback, BasePredictionWriter) for callback in trainer.callbacks):
        trainer.callbacks.append(PredictionWriter())
