"""The vector-quantised VAE (van den Oord, Vinyals & Kavukcuoglu, 2017)."""

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from ae_lightning.autoencoders.base import Autoencoder
from ae_lightning.autoencoders.interface import DiscreteCode
from ae_lightning.batch import Batch
from ae_lightning.errors import ConfigError
from ae_lightning.nets.quantizer import Quantized, VectorQuantizer, usage_statistics


class VQVAE(Autoencoder, DiscreteCode):
    """Autoencoder with a discrete code: the encoder's `latent_dim` outputs are cut into
    latent_dim / code_dim vectors, each replaced by its nearest codebook entry before decoding.

    loss = reconstruction + ||sg(z) - e||^2 (the codebook term; absent with EMA updates) + commitment_cost *
    ||z - sg(e)||^2, summed over the vectors of an image; gradients pass the quantizer straight through.
    There is no prior to sample from (the paper fits one afterwards), so grids show reconstructions only.
    Reports `commitment` and `codebook` (unweighted), the codebook `perplexity` and the fraction of codes
    used (`codes_used`): after each training step, and over a whole validation pass.

    Args:
        codebook_size: number of codebook entries.
        code_dim: size of each code vector; must divide `latent_dim`.
        commitment_cost: beta, the weight of the commitment term (the paper: 0.25).
        ema_decay: 0 learns the codebook by gradient; a value in (0, 1), e.g. 0.99, updates it as a moving
            average of the encoder vectors assigned to each code instead.
        dead_code_threshold: 0 (off), or codes used less than this fraction of the average code (moving
            average of uses per step) are moved onto random encoder vectors of the current batch.
        **kwargs: the arguments of `Autoencoder`.
    """

    latent_space = "discrete"

    def __init__(
        self,
        codebook_size: int = 512,
        code_dim: int = 8,
        commitment_cost: float = 0.25,
        ema_decay: float = 0.0,
        dead_code_threshold: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if codebook_size < 2:
            raise ConfigError(f"codebook_size must be at least 2, got {codebook_size}")
        if code_dim < 1 or self.latent_dim % code_dim:
            raise ConfigError(
                f"code_dim must be a positive divisor of latent_dim {self.latent_dim} (each image's code is "
                f"cut into latent_dim / code_dim vectors), got {code_dim}"
            )
        if commitment_cost < 0:
            raise ConfigError(f"commitment_cost must be >= 0, got {commitment_cost}")
        if not 0 <= ema_decay < 1:
            raise ConfigError(
                f"ema_decay must be in [0, 1) (0: codebook learnt by gradient), got {ema_decay}"
            )
        if not 0 <= dead_code_threshold < 1:
            raise ConfigError(
                "dead_code_threshold must be in [0, 1): a fraction of the average code's use (0: no reset), "
                f"got {dead_code_threshold}"
            )
        self.codebook_size = codebook_size
        self.code_dim = code_dim
        self.code_length = self.latent_dim // code_dim
        self.commitment_cost = commitment_cost
        self.quantizer = VectorQuantizer(codebook_size, code_dim, ema_decay, dead_code_threshold)

    def quantize(self, z: Tensor, update: bool = False) -> Quantized:
        """Encoder output (B, latent_dim) -> codes (B, latent_dim), indices (B, latent_dim / code_dim) and
        the commitment and codebook terms summed per image (B,); `update` (training) updates the codebook."""
        batch = z.shape[0]
        quantized = self.quantizer(z.reshape(-1, self.code_dim), update=update)
        return Quantized(
            quantized.codes.reshape(batch, -1),
            quantized.indices.reshape(batch, -1),
            quantized.commitment.reshape(batch, -1).sum(1),
            quantized.codebook.reshape(batch, -1).sum(1),
        )

    def code(self, x: Tensor) -> Tensor:
        """The quantised code: the chosen entries, concatenated, (B, latent_dim)."""
        # the entries themselves, not the straight-through z + (e - z), which rounds away from e: a code
        # drawn as indices (`code_of`) decodes exactly as the image's own
        return self.code_of(self.codes(x))

    def codes(self, x: Tensor) -> Tensor:
        """Codebook indices of each image, (B, latent_dim / code_dim)."""
        return self.quantize(self.encoder(x)).indices

    def code_of(self, indices: Tensor) -> Tensor:
        """The entries of indices (B, latent_dim / code_dim), concatenated: (B, latent_dim)."""
        return F.embedding(indices, self.quantizer.codebook).reshape(indices.shape[0], -1)

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        quantized = self.quantize(self.encoder(batch.inputs), update=self.training)
        recon = self.reconstruction_loss(self.decoder(quantized.codes), batch.inputs)
        loss = recon + self.commitment_cost * quantized.commitment
        terms = {"loss": loss, "recon": recon, "commitment": quantized.commitment}
        if self.quantizer.ema_decay == 0:  # with EMA updates the codebook takes no gradient
            terms["loss"] = loss + quantized.codebook
            terms["codebook"] = quantized.codebook
        return terms

    def training_metrics(self) -> dict[str, Tensor | float]:
        # the counts of the last step, already summed over processes by the quantizer
        return usage_statistics(self.quantizer.last_counts)
