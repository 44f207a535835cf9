"""The variational autoencoder (Kingma & Welling, 2014), with a beta weight on the KL term (Higgins et al.,
2017) and linear KL annealing (Bowman et al., 2016)."""

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ae_lightning.errors import ConfigError
from ae_lightning.metrics import ActiveUnits
from ae_lightning.models.base import AutoencoderBase, Stage, images_of


def gaussian_kl_per_unit(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) of each latent unit: (B, D) -> (B, D), in float32 (mixed precision
    computes mu and logvar in bfloat16 or float16)."""
    mu, logvar = mu.float(), logvar.float()
    return -0.5 * (1 + logvar - mu.square() - logvar.exp())


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row, summed over latent units: (B, D) -> (B,), in float32."""
    return gaussian_kl_per_unit(mu, logvar).sum(1)


class VAE(AutoencoderBase):
    """Variational autoencoder, with a weight beta on the KL term and an optional linear warm-up of it.

    The encoder gives (mu, logvar) of a diagonal Gaussian posterior, a reparameterised sample is decoded, and
    the loss is reconstruction + beta * KL to the N(0, I) prior. beta > 1 is the beta-VAE. Validation and
    test also log the KL of each latent unit (`kl_dim/<i>`), and validation the number of active units.

    Args:
        beta: weight of the KL term (1 gives the ELBO).
        kl_warmup_steps: the KL weight in training rises linearly from 0 to beta over this many optimizer
            steps (KL annealing); 0 uses beta from the start. Validation and test always use beta.
        **kwargs: the arguments of `AutoencoderBase`.
    """

    def __init__(self, beta: float = 1.0, kl_warmup_steps: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if beta < 0:
            raise ConfigError(f"beta must be >= 0 (the weight of the KL term), got {beta}")
        if kl_warmup_steps < 0:
            raise ConfigError(
                f"kl_warmup_steps must be >= 0 (0 turns the warm-up off), got {kl_warmup_steps}"
            )
        self.beta = beta
        self.kl_warmup_steps = kl_warmup_steps
        self.val_active_units = ActiveUnits(self.latent_dim)

    def _encoder_out_dim(self) -> int:
        return 2 * self.latent_dim

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) -> (mu, logvar), each (B, latent_dim)."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def latent(self, x: Tensor) -> Tensor:
        """Posterior mean, (B, latent_dim)."""
        return self.encode(x)[0]

    @staticmethod
    def reparameterize(mu: Tensor, logvar: Tensor) -> Tensor:
        """A sample z = mu + sigma * eps, differentiable in mu and logvar: (B, D)."""
        return mu + (0.5 * logvar).exp() * torch.randn_like(mu)

    def kl_weight(self) -> float:
        """The KL weight of the current training step: beta * min(1, global_step / kl_warmup_steps)."""
        if self.kl_warmup_steps == 0:
            return self.beta
        return self.beta * min(1.0, self.global_step / self.kl_warmup_steps)

    def loss_terms(self, x: Tensor, stage: Stage) -> dict[str, Tensor]:
        mu, logvar = self.encode(x)
        return self.elbo_terms(x, self.decoder(self.reparameterize(mu, logvar)), mu, logvar, stage)

    def elbo_terms(
        self, x: Tensor, decoder_output: Tensor, mu: Tensor, logvar: Tensor, stage: Stage
    ) -> dict[str, Tensor]:
        """The terms of the (beta-weighted) negative ELBO, given the decoded posterior sample."""
        recon = self.reconstruction_loss(decoder_output, x)
        kl_per_unit = gaussian_kl_per_unit(mu, logvar)
        kl = kl_per_unit.sum(1)
        # the warm-up schedules training only: val/loss always weighs the KL by beta, so it compares across
        # epochs and picks checkpoints on the objective itself
        weight = self.kl_weight() if stage == "train" else self.beta
        terms = {"loss": recon + weight * kl, "recon": recon, "kl": kl}
        if stage != "train":
            terms.update({f"kl_dim/{unit}": kl_per_unit[:, unit] for unit in range(self.latent_dim)})
        return terms

    def negative_elbo(
        self, x: Tensor, mu: Tensor, logvar: Tensor, decode_raw: Callable[[Tensor], Tensor], num_samples: int
    ) -> Tensor:
        """Negative ELBO (beta = 1) of each image, its reconstruction term averaged over `num_samples`
        posterior samples decoded by `decode_raw`: (B,)."""
        recon = torch.stack(
            [
                self.reconstruction_loss(decode_raw(self.reparameterize(mu, logvar)), x)
                for _ in range(num_samples)
            ]
        ).mean(0)
        return recon + gaussian_kl(mu, logvar)

    def anomaly_score(self, x: Tensor, num_samples: int = 16) -> Tensor:
        """Negative ELBO of each image (beta = 1), its reconstruction term averaged over `num_samples`
        posterior samples: (B, C, H, W) -> (B,)."""
        return self.negative_elbo(x, *self.encode(x), self.decoder, num_samples)

    def prior_noise(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """`num_samples` draws of the N(0, I) prior, (num_samples, latent_dim), on the model's device.

        `generator` (a CPU generator) makes the draws repeatable.
        """
        z = torch.randn(num_samples, self.latent_dim, generator=generator)
        return z.to(self.device, self.dtype)

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """Images decoded from `num_samples` draws of the N(0, I) prior: (num_samples, C, H, W).

        `generator` (a CPU generator) makes the draws repeatable.
        """
        return self.decode(self.prior_noise(num_samples, generator))

    def training_step(self, batch: Tensor | Sequence[Tensor], batch_idx: int) -> Tensor:
        loss = super().training_step(batch, batch_idx)
        self.log("train/kl_weight", self.kl_weight(), on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: Tensor | Sequence[Tensor], batch_idx: int) -> Tensor:
        loss = super().validation_step(batch, batch_idx)
        # active units need the spread of the posterior means over the whole set: accumulated here, counted
        # (across devices) when Lightning computes the metric at the end of the epoch
        self.val_active_units.update(self.latent(images_of(batch), **self.conditions_of(batch)))
        self.log("val/active_units", self.val_active_units, on_step=False, on_epoch=True)
        return loss
