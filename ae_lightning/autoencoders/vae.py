"""The variational autoencoder (Kingma & Welling, 2014), with a beta weight on the KL term (Higgins et al.,
2017) and linear KL annealing (Bowman et al., 2016)."""

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ae_lightning.autoencoders.base import Autoencoder
from ae_lightning.autoencoders.interface import GaussianPosterior, Generative, LogLikelihood
from ae_lightning.batch import Batch
from ae_lightning.errors import ConfigError
from ae_lightning.nets.sampling import standard_normal

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


def importance_chunks(
    inputs: Tensor,
    num_samples: int,
    chunk_size: int | None,
    weigh: Callable[[int, Tensor], tuple[Tensor, Tensor]],
    draw_numbers: int = 0,
) -> tuple[Tensor, Tensor]:
    """The log importance weights of `num_samples` posterior draws of each image, made `chunk_size` draws at a
    time: `weigh(count, targets)` draws `count` per image and returns their log weights and reconstruction
    terms, (count, B) each; `targets` are the inputs repeated `count` times, as the decoder's outputs
    (count * B, ...). The default chunk keeps its decoder outputs, or the `draw_numbers` a sampler makes per
    image and draw where those are more, under NLL_CHUNK_ELEMENTS numbers. Returns both, (num_samples, B)."""
    if chunk_size is None:
        chunk_size = max(1, NLL_CHUNK_ELEMENTS // (inputs.shape[0] * max(1, inputs[0].numel(), draw_numbers)))
    log_weights, recons = [], []
    for start in range(0, num_samples, chunk_size):
        count = min(chunk_size, num_samples - start)
        targets = inputs.repeat(count, *[1] * (inputs.ndim - 1))
        log_weight, recon = weigh(count, targets)
        log_weights.append(log_weight)
        recons.append(recon)
    return torch.cat(log_weights), torch.cat(recons)


#: posterior samples of the anomaly score, and the seed of their fixed noise
SCORE_SAMPLES, SCORE_NOISE_SEED = 16, 0


def score_noise(num_samples: int, latent_dim: int) -> Tensor:
    """The fixed standard normal draws of the anomaly score, (num_samples, latent_dim)."""
    return torch.randn(num_samples, latent_dim, generator=torch.Generator().manual_seed(SCORE_NOISE_SEED))


#: log(2 pi), of the normal density
LOG_2PI = math.log(2 * math.pi)


def gaussian_log_density(z: Tensor, mu: Tensor | float = 0.0, logvar: Tensor | float = 0.0) -> Tensor:
    """log N(z; mu, exp(logvar)) of each element (broadcast), written out rather than taken from
    torch.distributions.Normal, whose argument checks make the host wait for a GPU at every call."""
    # a number stays a number: a tensor made of it on a GPU is a copy from the host that waits
    precision = math.exp(-logvar) if isinstance(logvar, float | int) else (-logvar).exp()
    return -0.5 * (LOG_2PI + logvar + (z - mu).square() * precision)


def reparameterize(mu: Tensor, logvar: Tensor) -> Tensor:
    """A sample z = mu + sigma * eps, differentiable in mu and logvar: (B, D)."""
    return mu + (0.5 * logvar).exp() * torch.randn_like(mu)


def check_elbo_arguments(beta: float, kl_warmup_steps: int, nll_samples: int) -> None:
    """Refuses, in one line, a negative KL weight, warm-up or number of NLL samples."""
    if nll_samples < 0:
        raise ConfigError(f"nll_samples must be >= 0 (0 turns test/nll off), got {nll_samples}")
    if beta < 0:
        raise ConfigError(f"beta must be >= 0 (the weight of the KL term), got {beta}")
    if kl_warmup_steps < 0:
        raise ConfigError(f"kl_warmup_steps must be >= 0 (0 turns the warm-up off), got {kl_warmup_steps}")


def warmed_up(weight: float, warmup_steps: int, step: int) -> float:
    """`weight` at training step `step` of a linear warm-up over `warmup_steps` (0: none)."""
    return weight if warmup_steps == 0 else weight * min(1.0, step / warmup_steps)


class VAE(Autoencoder, GaussianPosterior, Generative, LogLikelihood):
    """Variational autoencoder, with a weight beta on the KL term and an optional linear warm-up of it.

    The encoder gives (mu, logvar) of a diagonal Gaussian posterior, a reparameterised sample is decoded, and
    the loss is reconstruction + beta * KL to the N(0, I) prior. beta > 1 is the beta-VAE. In evaluation
    mode the terms include the KL of each latent unit (`kl_dim/<i>`), and a validation pass counts the
    active units. `negative_log_likelihood` estimates -log p(x) in nats by importance sampling (the k-sample
    IWAE bound, Burda et al., 2016); `test` reports it with the Bernoulli likelihood.

    Args:
        beta: weight of the KL term (1 gives the ELBO).
        kl_warmup_steps: the KL weight in training rises linearly from 0 to beta over this many optimizer
            steps (KL annealing); 0 uses beta from the start. Evaluation always uses beta.
        nll_samples: k, the importance samples per test image for `test/nll` (Bernoulli likelihood only; a
            Gaussian reconstruction term is known only up to a constant). 0 turns it off. Each sample costs
            one decoder pass; they are decoded in chunks, so memory does not grow with k.
        **kwargs: the arguments of `Autoencoder`.
    """

    #: the score is the negative ELBO, not a reconstruction error
    scores_by_reconstruction = False

    evaluation_arguments = ("nll_samples",)

    def __init__(
        self, beta: float = 1.0, kl_warmup_steps: int = 0, nll_samples: int = 1000, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        check_elbo_arguments(beta, kl_warmup_steps, nll_samples)
        self.beta = beta
        self.kl_warmup_steps = kl_warmup_steps
        self.nll_samples = nll_samples
        # moved with the model; not saved (a function of the seed)
        self.register_buffer("score_noise", score_noise(SCORE_SAMPLES, self.latent_dim), persistent=False)

    def encoder_outputs(self) -> int:
        return 2 * self.latent_dim

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) -> (mu, logvar), each (B, latent_dim)."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def code(self, x: Tensor) -> Tensor:
        """Posterior mean, (B, latent_dim)."""
        return self.encode(x)[0]

    def kl_weight(self) -> float:
        """The KL weight at training step `step`: beta * min(1, step / kl_warmup_steps)."""
        return warmed_up(self.beta, self.kl_warmup_steps, self.step)

    def posterior(self, batch: Batch) -> tuple[Tensor, Tensor, Callable[[Tensor], Tensor]]:
        """(mu, logvar) of q(z | x), each (B, D), and the raw decoder of codes of these images (for codes of
        n x B rows, n draws per image, image-major within a draw)."""
        mu, logvar = self.encode(batch.inputs)
        return mu, logvar, self.decoder

    def log_prior(self, z: Tensor) -> Tensor:
        """log p(z) of codes (..., D) -> (...), in float32: here the N(0, I) prior."""
        return gaussian_log_density(z.float()).sum(-1)

    def kl_divergence(self, mu: Tensor, logvar: Tensor, z: Tensor) -> Tensor:
        """KL(q(z | x) || p(z)) of each image at the posterior draws z (..., B, D) -> (..., B), in float32:
        here exact (a Gaussian posterior and prior), the same for every draw; a model with another prior
        estimates it on the draws."""
        return gaussian_kl(mu, logvar).expand(z.shape[:-1])

    def kl_terms(self, mu: Tensor, logvar: Tensor, z: Tensor) -> dict[str, Tensor]:
        """`kl` of each image at the draw z (B, D), and in evaluation the KL of each latent unit
        (`kl_dim/<i>`, exact for the factorised N(0, I) prior), each (B,)."""
        kl_per_unit = gaussian_kl_per_unit(mu, logvar)
        terms = {"kl": kl_per_unit.sum(1)}
        if not self.training:
            terms.update({f"kl_dim/{unit}": kl_per_unit[:, unit] for unit in range(self.latent_dim)})
        return terms

    def posterior_draw(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """mu and logvar of q(z | x), one reparameterised draw z (each (B, D)) and the reconstruction term
        at it (B,): where every one-draw objective starts."""
        mu, logvar, decode_raw = self.posterior(batch)
        z = reparameterize(mu, logvar)
        return mu, logvar, z, self.reconstruction_loss(decode_raw(z), batch.inputs)

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        mu, logvar, z, recon = self.posterior_draw(batch)
        kl_terms = self.kl_terms(mu, logvar, z)
        # the warm-up schedules training only: evaluation always weighs the KL by beta, so val/loss compares
        # across epochs and picks checkpoints on the objective itself
        weight = self.kl_weight() if self.training else self.beta
        return {"loss": recon + weight * kl_terms["kl"], "recon": recon, **kl_terms}

    def log_weights(
        self, batch: Batch, num_samples: int, chunk_size: int | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """log p(x | z_i) + log p(z_i) - log q(z_i | x) for `num_samples` posterior draws z_i of each image:
        (num_samples, B); with the reconstruction terms (num_samples, B), mu and logvar (B, D). The draws are
        decoded `chunk_size` at a time (default: as many as keep a chunk's outputs under 2^24 numbers)."""
        mu, logvar, decode_raw = self.posterior(batch)
        std = (0.5 * logvar).exp()

        def weigh(count: int, targets: Tensor) -> tuple[Tensor, Tensor]:
            z = mu + std * torch.randn((count, *mu.shape), dtype=mu.dtype, device=mu.device)  # (count, B, D)
            recon = self.reconstruction_loss(decode_raw(z.flatten(0, 1)), targets).view(count, -1)
            log_posterior = gaussian_log_density(z.float(), mu.float(), logvar.float()).sum(-1)
            return -recon + self.log_prior(z) - log_posterior, recon

        log_weights, recons = importance_chunks(batch.inputs, num_samples, chunk_size, weigh)
        return log_weights, recons, mu, logvar

    @torch.no_grad()
    def negative_log_likelihood(
        self, batch: Batch, num_samples: int, chunk_size: int | None = None
    ) -> Tensor:
        """-log p(x) in nats estimated with `num_samples` importance samples (minus the k-sample IWAE
        bound, an upper bound on the NLL that tightens as k grows): (B,)."""
        return -iwae_bound(self.log_weights(batch, num_samples, chunk_size)[0])

    def reports_likelihood(self) -> bool:
        return self.nll_samples > 0 and self.likelihood == "bernoulli"

    def anomaly_score(self, batch: Batch, num_samples: int = SCORE_SAMPLES) -> Tensor:
        """Negative ELBO of each image (beta = 1), its reconstruction term averaged over `num_samples`
        posterior samples: (B,). The samples are mu + sigma * eps for fixed draws eps (seeded, the same for
        every image), so an image always gets the same score, here and in an exported scorer."""
        mu, logvar, decode_raw = self.posterior(batch)
        eps = self.score_noise if num_samples == SCORE_SAMPLES else score_noise(num_samples, self.latent_dim)
        z = mu + (0.5 * logvar).exp() * eps.to(mu.device, mu.dtype)[:, None]  # (S, B, D)
        targets = batch.inputs.repeat(num_samples, *[1] * (batch.inputs.ndim - 1))
        recon = self.reconstruction_loss(decode_raw(z.flatten(0, 1)), targets).view(num_samples, -1)
        return (recon + self.kl_divergence(mu, logvar, z)).mean(0)

    def prior_noise(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """`num_samples` draws of the N(0, I) prior, (num_samples, latent_dim), on the model's device;
        `generator` (a CPU generator) makes the draws repeatable."""
        return standard_normal((num_samples, self.latent_dim), generator, self.device, self.dtype)

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        return self.decode(self.prior_noise(num_samples, generator))

    def training_metrics(self) -> dict[str, Tensor | float]:
        return {"kl_weight": self.kl_weight()}
