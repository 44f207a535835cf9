"""The hierarchical residual-quantised VAE, HRQ-VAE (Hosking, Tang & Lapata, ACL 2022)."""

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ae_lightning.autoencoders.base import Autoencoder
from ae_lightning.autoencoders.interface import DiscreteCode
from ae_lightning.batch import Batch
from ae_lightning.errors import ConfigError
from ae_lightning.nets.quantizer import usage_statistics
from ae_lightning.nets.residual_quantizer import ResidualQuantizer

#: each level below the first cools this much more slowly than the one above it (pythae's schedule)
LEVEL_COOLING_SLOWDOWN = 1.5


class ImageQuantized(NamedTuple):
    """The residual quantisation of a batch of encoder outputs."""

    codes: Tensor  # (B, latent_dim): what the decoder takes
    indices: Tensor  # (B, vectors, num_levels): the entry chosen at each level of each vector
    commitment: Tensor  # (B,): ||z - sg(c)||^2 summed over the vectors of an image
    kl: Tensor  # (B,)
    norm_loss: Tensor  # (B,)


class HRQVAE(Autoencoder, DiscreteCode):
    """Autoencoder with a hierarchical discrete code: the encoder's `latent_dim` outputs are cut into
    latent_dim / code_dim vectors, and each is replaced by the sum of one entry of each of `num_levels`
    codebooks, level l quantising the residual the levels above left (a coarse-to-fine path of choices).

    In training the choice at each level is a draw from softmax(-squared distances) (Gumbel-max), the chosen
    entry in the forward pass with the gradient of its Gumbel-softmax relaxation (straight-through), whose
    temperature at level l is max(min_temperature, temperature * exp(-step / (temperature_decay_steps *
    1.5^(l-1)))): pythae's schedule, counted in optimizer steps instead of epochs. Annealing sharpens the
    relaxation the gradient comes from, not the draws. Depth dropout drops, per vector, the levels from some
    depth on (never level 1). Evaluation and `code` take the nearest entry at every level (deterministic,
    exportable). There is no prior to sample from, so grids show reconstructions only.

    loss = reconstruction + commitment_cost * ||z - sg(c)||^2 (c: the nearest-entry code) + kl_weight *
    sum over levels of KL(softmax(-distances) || uniform) + norm_loss_weight * mean over consecutive levels
    of (max(norm_loss_scale ||e_(l+1)|| / ||e_l||, 1) - 1)^2, each summed over the vectors of an image.
    Terms `recon`, `commitment`, and `kl` / `norm_loss` where weighted; after each training step the
    `perplexity` and fraction of entries used (`codes_used`) of the nearest-entry code, and the level-1
    `temperature`.

    `codes` numbers level l's entries (l - 1) * codebook_size ... l * codebook_size - 1, so the declared
    `codebook_size` attribute (what the code-usage statistic counts) is num_levels x the argument.

    Args:
        codebook_size: entries of each level's codebook.
        code_dim: size of each code vector; must divide `latent_dim`.
        num_levels: depth of the hierarchy (codebooks per vector).
        commitment_cost: weight of ||z - sg(c)||^2 (pythae and the authors' code: none, 0).
        temperature: Gumbel-softmax temperature at step 0.
        min_temperature: the temperature is annealed down to this (pythae: 0.5).
        temperature_decay_steps: optimizer steps over which level 1's temperature falls by a factor e (before
            the floor); 0 keeps it constant.
        init_scale: norm of the level-1 entries at initialisation (about that of the encoder's vectors).
        init_decay_weight: level l's entries start with norm init_scale * init_decay_weight^(l-1).
        norm_loss_weight: weight of the norm loss (pythae: 0.5); 0 turns it off.
        norm_loss_scale: the norm loss is 0 while each chosen entry is at most 1 / norm_loss_scale of the
            norm of the one above it (pythae: 1.5).
        kl_weight: weight of the KL of each choice to the uniform prior (pythae: 0.1, as KL(uniform || q)).
        depth_drop_rate: in training, each level below the first is dropped (with all below it) with this
            probability, per vector.
        dead_code_threshold: 0 (off), or entries the nearest-entry code uses less than this fraction of the
            average entry of their level are moved onto residuals of that level (as VQVAE's).
        **kwargs: the arguments of `Autoencoder`.
    """

    latent_space = "discrete"

    def __init__(
        self,
        codebook_size: int = 64,
        code_dim: int = 4,
        num_levels: int = 3,
        commitment_cost: float = 0.25,
        temperature: float = 1.0,
        min_temperature: float = 0.5,
        temperature_decay_steps: int = 5000,
        init_scale: float = 1.0,
        init_decay_weight: float = 0.5,
        norm_loss_weight: float = 0.5,
        norm_loss_scale: float = 1.5,
        kl_weight: float = 0.0,
        depth_drop_rate: float = 0.1,
        dead_code_threshold: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_arguments(codebook_size, code_dim, self.latent_dim, num_levels)
        check_weights(
            commitment_cost=commitment_cost,
            norm_loss_weight=norm_loss_weight,
            kl_weight=kl_weight,
            temperature_decay_steps=temperature_decay_steps,
        )
        for name, value in (("temperature", temperature), ("init_scale", init_scale)):
            if value <= 0:
                raise ConfigError(f"{name} must be > 0, got {value}")
        if not 0 < min_temperature <= temperature:
            raise ConfigError(
                f"min_temperature must be in (0, temperature {temperature}] (the floor of the annealed "
                f"Gumbel temperature), got {min_temperature}"
            )
        if not 0 < init_decay_weight <= 1:
            raise ConfigError(
                "init_decay_weight must be in (0, 1] (each level's entries start that much smaller than the "
                f"level above), got {init_decay_weight}"
            )
        if norm_loss_scale < 1:
            raise ConfigError(
                "norm_loss_scale must be >= 1 (the norm loss wants each entry at most 1 / norm_loss_scale of "
                f"the one above), got {norm_loss_scale}"
            )
        for name, value in (
            ("depth_drop_rate", depth_drop_rate),
            ("dead_code_threshold", dead_code_threshold),
        ):
            if not 0 <= value < 1:
                raise ConfigError(f"{name} must be in [0, 1) (0: off), got {value}")
        self.entries_per_level = codebook_size
        self.codebook_size = num_levels * codebook_size  # what `codes` numbers: every level's entries
        self.code_dim = code_dim
        self.num_levels = num_levels
        self.code_length = self.latent_dim // code_dim * num_levels
        self.commitment_cost = commitment_cost
        self.temperature = temperature
        self.min_temperature = min_temperature
        self.temperature_decay_steps = temperature_decay_steps
        self.norm_loss_weight = norm_loss_weight
        self.norm_loss_scale = norm_loss_scale
        self.kl_weight = kl_weight
        self.depth_drop_rate = depth_drop_rate
        self.quantizer = ResidualQuantizer(
            codebook_size, code_dim, num_levels, init_scale, init_decay_weight, dead_code_threshold
        )

    def temperatures(self) -> list[float]:
        """The Gumbel-softmax temperature of each level at training step `step`."""
        if self.temperature_decay_steps == 0:
            return [self.temperature] * self.num_levels
        decay_steps = [
            self.temperature_decay_steps * LEVEL_COOLING_SLOWDOWN**depth for depth in range(self.num_levels)
        ]
        return [
            max(self.min_temperature, self.temperature * math.exp(-self.step / steps))
            for steps in decay_steps
        ]

    def quantize(self, z: Tensor, training: bool = False) -> ImageQuantized:
        """Encoder output (B, latent_dim) -> its quantisation: with `training`, Gumbel-softmax draws, depth
        dropout and codebook bookkeeping; without, the nearest entry at every level."""
        batch = z.shape[0]
        quantized = self.quantizer(
            z.reshape(-1, self.code_dim),
            temperatures=self.temperatures() if training else None,
            drop_rate=self.depth_drop_rate if training else 0.0,
            update=training,
            norm_loss_scale=self.norm_loss_scale,
        )
        terms = (quantized.commitment, quantized.kl, quantized.norm_loss)
        return ImageQuantized(
            quantized.codes.reshape(batch, -1),
            quantized.indices.reshape(batch, -1, self.num_levels),
            *(term.reshape(batch, -1).sum(1) for term in terms),  # summed over the vectors of an image
        )

    def code(self, x: Tensor) -> Tensor:
        """The deterministic code: the nearest entry at every level, summed, (B, latent_dim)."""
        z = self.encoder(x)
        return self.quantizer.code(z.reshape(-1, self.code_dim)).reshape(z.shape[0], -1)

    def codes(self, x: Tensor) -> Tensor:
        """Entries chosen by `code`, (B, vectors * num_levels) int64, vector by vector, level by level
        within a vector; level l's entry k is numbered (l - 1) * entries_per_level + k."""
        z = self.encoder(x)
        indices = self.quantizer.choose(z.reshape(-1, self.code_dim))[0]  # (B * vectors, num_levels)
        offsets = torch.arange(self.num_levels, device=indices.device) * self.entries_per_level
        return (indices + offsets).reshape(z.shape[0], -1)

    def code_of(self, indices: Tensor) -> Tensor:
        """The code of entries numbered as `codes` numbers them, (B, vectors * num_levels) -> (B, latent_dim):
        each vector the sum of its levels' entries, as `code` sums them (in float32)."""
        with torch.autocast(indices.device.type, enabled=False):
            # every level's codebook one after the other: row (l - 1) * entries_per_level + k is level l's k
            table = torch.cat([level.codebook.float() for level in self.quantizer.levels])
            entries = F.embedding(indices, table).reshape(-1, self.num_levels, self.code_dim)
            return entries.sum(1).reshape(indices.shape[0], -1)

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        quantized = self.quantize(self.encoder(batch.inputs), training=self.training)
        recon = self.reconstruction_loss(self.decoder(quantized.codes), batch.inputs)
        terms = {"recon": recon, "commitment": quantized.commitment}
        loss = recon + self.commitment_cost * quantized.commitment
        if self.kl_weight > 0:
            loss = loss + self.kl_weight * quantized.kl
            terms["kl"] = quantized.kl
        if self.norm_loss_weight > 0 and self.num_levels > 1:
            loss = loss + self.norm_loss_weight * quantized.norm_loss
            terms["norm_loss"] = quantized.norm_loss
        return {"loss": loss, **terms}

    def training_metrics(self) -> dict[str, Tensor | float]:
        # the counts of the last step, already summed over processes by each level's quantizer
        counts = self.quantizer.last_counts
        usage = usage_statistics(counts) if counts is not None else {}
        return {**usage, "temperature": self.temperatures()[0]}


def check_arguments(codebook_size: int, code_dim: int, latent_dim: int, num_levels: int) -> None:
    """Refuses, in one line, a codebook of fewer than 2 entries, a code_dim not dividing latent_dim, or no
    level."""
    if codebook_size < 2:
        raise ConfigError(f"codebook_size must be at least 2 (entries per level), got {codebook_size}")
    if code_dim < 1 or latent_dim % code_dim:
        raise ConfigError(
            f"code_dim must be a positive divisor of latent_dim {latent_dim} (each image's code is cut into "
            f"latent_dim / code_dim vectors), got {code_dim}"
        )
    if num_levels < 1:
        raise ConfigError(f"num_levels must be at least 1 (codebooks per vector), got {num_levels}")


def check_weights(**weights: float) -> None:
    """Refuses, in one line, a negative loss weight or number of steps (0 turns each off)."""
    for name, value in weights.items():
        if value < 0:
            raise ConfigError(f"{name} must be >= 0 (0 turns it off), got {value}")
