"""A model that trains with several optimizers and whose answer is known: the plain AE with its encoder and
decoder stepped by two optimizers on the same loss. Stepped every iteration, it trains exactly as the AE
with one optimizer does (the optimizers are per-parameter), so the several-optimizer path can be compared
to the single one, step for step. `cli.py` loads it as `--model tests.split_models.SplitAE`."""

from typing import Any

from ae_lightning import autoencoders
from ae_lightning.autoencoders import OptimizedPart, SeveralOptimizers
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
