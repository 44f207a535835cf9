"""The variational autoencoder (Kingma & Welling, 2014), with a beta weight on the KL term (Higgins et al.,
2017) and linear KL annealing (Bowman et al., 2016)."""

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Normal

from ae_lightning.errors import ConfigError
from ae_lightning.metrics import ActiveUnits
from ae_lightning.models.base import AutoencoderBase, Stage, images_of

#: the decoder outputs one importance-sampling chunk may hold (float32: 64 MB), so that k = 1000 samples of a
#: batch are decoded a part at a time and memory stays bounded whatever k
NLL_CHUNK_ELEMENTS = 2**24


def gaussian_kl_per_unit(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) of each latent unit: (B, D) -> (B, D), in float32 (mixed precision
    computes mu and logvar in bfloat16 or float16)."""
    mu, logvar = mu.float(), logvar.float()
    return -0.5 * (1 + logvar - mu.square() - logvar.exp())


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row, summed over latent units: (B, D) -> (B,), in float32."""
    return gaussian_kl_per_unit(mu, logvar).sum(1)


def iwae_bound(log_weights: Tensor) -> Tensor:
    """log (1/k) sum_i exp(log_weights_i) over the first dimension, computed stably: (k, B) -> (B,)."""
    return log_weights.logsumexp(0) - math.log(log_weights.shape[0])


class VAE(AutoencoderBase):
    """Variational autoencoder, with a weight beta on the KL term and an optional linear warm-up of it.

    The encoder gives (mu, logvar) of a diagonal Gaussian posterior, a reparameterised sample is decoded, and
    the loss is reconstruction + beta * KL to the N(0, I) prior. beta > 1 is the beta-VAE. Validation and
    test also log the KL of each latent unit (`kl_dim/<i>`), and validation the number of active units. With
    the Bernoulli likelihood, test also logs `test/nll`, the negative log-likelihood in nats estimated by
    importance sampling (the k-sample IWAE bound, Burda et al., 2016), beside the negative ELBO
    (`test/recon` + `test/kl`).

    Args:
        beta: weight of the KL term (1 gives the ELBO).
        kl_warmup_steps: the KL weight in training rises linearly from 0 to beta over this many optimizer
            steps (KL annealing); 0 uses beta from the start. Validation and test always use beta.
        nll_samples: k, the importance samples per test image for `test/nll` (Bernoulli likelihood only; a
            Gaussian reconstruction term is known only up to a constant). 0 turns it off. Each sample costs
            one decoder pass; they are decoded in chunks, so memory does not grow with k.
        **kwargs: the arguments of `AutoencoderBase`.
    """

    evaluation_arguments = ("nll_samples",)

    def __init__(
        self, beta: float = 1.0, kl_warmup_steps: int = 0, nll_samples: int = 1000, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if nll_samples < 0:
            raise ConfigError(f"nll_samples must be >= 0 (0 turns test/nll off), got {nll_samples}")
        self.nll_samples = nll_samples
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

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor, Callable[[Tensor], Tensor]]:
        """(mu, logvar) of q(z | x), each (B, D), and the raw decoder of codes of these images (for codes of
        n x B rows, n draws per image, image-major within a draw)."""
        mu, logvar = self.encode(x)
        return mu, logvar, self.decoder

    def log_weights(
        self, x: Tensor, num_samples: int, chunk_size: int | None = None, **conditions: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """log p(x | z_i) + log p(z_i) - log q(z_i | x) for `num_samples` posterior draws z_i of each image:
        (num_samples, B); with the reconstruction terms (num_samples, B), mu and logvar (B, D). The draws are
        decoded `chunk_size` at a time (default: as many as keep a chunk's outputs under 2^24 numbers)."""
        mu, logvar, decode_raw = self.posterior(x, **conditions)
        posterior = Normal(mu, (0.5 * logvar).exp())
        if chunk_size is None:
            chunk_size = max(1, NLL_CHUNK_ELEMENTS // max(1, x[0].numel() * x.shape[0]))
        log_weights, recons = [], []
        for start in range(0, num_samples, chunk_size):
            count = min(chunk_size, num_samples - start)
            z = posterior.rsample((count,))  # (count, B, D)
            decoder_output = decode_raw(z.flatten(0, 1))  # (count * B, C, H, W)
            recon = self.reconstruction_loss(decoder_output, x.repeat(count, 1, 1, 1)).view(count, -1)
            log_prior = Normal(0.0, 1.0).log_prob(z.float()).sum(-1)
            log_posterior = posterior.log_prob(z).float().sum(-1)
            log_weights.append(-recon + log_prior - log_posterior)
            recons.append(recon)
        return torch.cat(log_weights), torch.cat(recons), mu, logvar

    @torch.no_grad()
    def negative_log_likelihood(
        self, x: Tensor, num_samples: int, chunk_size: int | None = None, **conditions: Tensor
    ) -> Tensor:
        """-log p(x) in nats estimated with `num_samples` importance samples (minus the k-sample IWAE
        bound, an upper bound on the NLL that tightens as k grows): (B,)."""
        return -iwae_bound(self.log_weights(x, num_samples, chunk_size, **conditions)[0])

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

    def train_metrics(self) -> dict[str, Tensor | float]:
        return {"kl_weight": self.kl_weight()}

    def test_step(self, batch: Tensor | Sequence[Tensor], batch_idx: int) -> Tensor:
        loss = super().test_step(batch, batch_idx)
        if self.nll_samples and self.likelihood == "bernoulli":
            x = images_of(batch)
            nll = self.negative_log_likelihood(x, self.nll_samples, **self.conditions_of(batch))
            self.log("test/nll", nll.mean(), on_epoch=True, sync_dist=True, batch_size=x.shape[0])
        return loss

    def validation_step(self, batch: Tensor | Sequence[Tensor], batch_idx: int) -> Tensor:
        loss = super().validation_step(batch, batch_idx)
        # active units need the spread of the posterior means over the whole set: accumulated here, counted
        # (across devices) when Lightning computes the metric at the end of the epoch
        self.val_active_units.update(self.latent(images_of(batch), **self.conditions_of(batch)))
        self.log("val/active_units", self.val_active_units, on_step=False, on_epoch=True)
        return loss
