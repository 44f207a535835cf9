"""A model that trains with several optimizers and whose answer is known: the plain AE with its encoder and
decoder stepped by two optimizers on the same loss. Stepped every iteration, it trains exactly as the AE
with one optimizer does (the optimizers are per-parameter), so the several-optimizer path can be compared
to the single one, step for step. `cli.py` loads it as `--model tests.split_models.SplitAE`."""

from typing import Any

import torch

from ae_lightning import autoencoders
from ae_lightning.autoencoders import OptimizedPart, SeveralOptimizers, take_part_gradients
from ae_lightning.models import AutoencoderModule


class SplitAutoencoder(autoencoders.AE, SeveralOptimizers):
    """`autoencoders.AE`, its encoder and decoder each with an optimizer.

    Args:
        decoder_every: the decoder steps at every `decoder_every`-th iteration.
        decoder_loss: the loss term the decoder minimises (`nan` is the loss times NaN, to break it).
    """

    def __init__(self, decoder_every: int = 1, decoder_loss: str = "loss", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.decoder_every = decoder_every
        self.decoder_loss = decoder_loss

    def loss_terms(self, batch: Any) -> dict:
        terms = super().loss_terms(batch)
        if self.decoder_loss == "nan":
            terms["nan"] = terms["loss"] * float("nan")
        return terms

    def optimized_parts(self) -> tuple[OptimizedPart, ...]:
        return (
            OptimizedPart("encoder", tuple(self.encoder.parameters()), "loss"),
            OptimizedPart("decoder", tuple(self.decoder.parameters()), self.decoder_loss, self.decoder_every),
        )


class SplitAE(AutoencoderModule):
    """The LightningModule of `SplitAutoencoder`."""

    def build_autoencoder(self, **model_args: Any) -> SplitAutoencoder:
        return SplitAutoencoder(**model_args)


def train_in_parts(
    model: Any, batch: Any, steps: int = 150, lr: float = 3e-3, same_noise: bool = True
) -> None:
    """`steps` iterations of a plain loop on one batch, one Adam per part of a model with several optimizers
    (`take_part_gradients`); a model with one optimizer is one part, all its parameters on `loss`.
    `same_noise`: every step draws the noise of the measurements before and after (seed 1)."""
    parts = model.checked_parts() if isinstance(model, SeveralOptimizers) else None
    if parts is None:
        parts = (OptimizedPart("all", tuple(model.parameters()), "loss"),)
    optimizers = {part.name: torch.optim.Adam(part.parameters, lr=lr) for part in parts}
    for iteration in range(steps):
        model.step = iteration
        if same_noise:
            torch.manual_seed(1)
        for part in take_part_gradients(model.loss_terms(batch), parts, iteration):
            optimizers[part.name].step()
