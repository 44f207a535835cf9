"""Handing pictures to the loggers, and reading the torch autoencoder a callback draws with."""

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from torch import Tensor

from ae_lightning.autoencoders import LatentModel
from ae_lightning.errors import ConfigError


def autoencoder_of(pl_module: "pl.LightningModule") -> LatentModel:
    """The torch autoencoder a module holds as `model` (every module of `ae_lightning.models` does)."""
    model = dict(pl_module.named_children()).get("model")
    if not isinstance(model, LatentModel):
        raise ConfigError(
            f"{type(pl_module).__name__} holds no ae_lightning autoencoder as `model`: the picture callbacks "
            "draw with the modules of ae_lightning.models"
        )
    return model


def log_image(trainer: "pl.Trainer", key: str, image: Tensor) -> None:
    """Hands a (3, H, W) image in [0, 1] to every attached logger that takes images, at the current step."""
    # loggers differ in how they scale float images (W&B does not: [0, 1] comes out black); bytes in
    # 0-255 mean the same to all. Rounded as save_image rounds, so loggers show the PNG's very pixels
    image = image.mul(255).add(0.5).clamp(0, 255).to(torch.uint8)
    step = trainer.global_step
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, image, global_step=step)
        elif isinstance(logger, WandbLogger):
            # W&B's x-axis is the step; a caption per image says which epoch's weights drew it
            caption = [f"epoch {trainer.current_epoch}, step {step}"]
            logger.log_image(key=key, images=[image.permute(1, 2, 0).numpy()], step=step, caption=caption)
