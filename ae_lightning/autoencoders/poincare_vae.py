"""The Poincaré VAE (Mathieu, Le Lan, Maddison, Tomioka & Teh, 2019, "Continuous Hierarchical
Representations with Poincaré Variational Auto-Encoders"): a latent space of constant negative curvature, the
Poincaré ball, with a wrapped or a Riemannian normal posterior and prior of the same family."""

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ae_lightning.autoencoders.base import Autoencoder
from ae_lightning.autoencoders.hyperbolic import (
    BALL_EPS,
    PROPOSALS,
    RiemannianNoise,
    distance,
    exp_map0,
    float32_at_least,
    log_map0,
    normalizer_constants,
    radius_proposals,
    riemannian_log_normalizer,
    riemannian_noise,
    riemannian_normal_log_density,
    riemannian_normal_sample,
    wrapped_normal_log_density,
    wrapped_normal_sample,
)
from ae_lightning.autoencoders.interface import Generative, LogLikelihood
from ae_lightning.autoencoders.vae import (
    SCORE_NOISE_SEED,
    SCORE_SAMPLES,
    check_elbo_arguments,
    importance_chunks,
    iwae_bound,
    score_noise,
    warmed_up,
)
from ae_lightning.batch import Batch
from ae_lightning.errors import ConfigError

Posterior = Literal["wrapped", "riemannian"]
POSTERIORS = ("wrapped", "riemannian")
#: added to the encoder's softplus scale: below -88 softplus is 0 in float32, and 1 / sigma^2 infinite
MIN_STD = 1e-4


class PoincareVAE(Autoencoder, Generative, LogLikelihood):
    """Poincaré VAE: codes on the Poincaré ball of curvature -c (D = latent_dim), whose volume grows
    exponentially with the radius, as the number of nodes of a tree with the depth (Mathieu et al., 2019).

    The encoder gives mu = exp_0(its first D outputs), on the ball (the code), and sigma = softplus(the rest)
    (+ 1e-4): D numbers for the wrapped normal posterior, one for the Riemannian normal. The prior is the same
    family at the origin with scale `prior_std`. The loss is recon(x | z) + beta [log q(z | x) - log p(z)] at
    one reparameterised draw z (a Monte-Carlo KL: neither KL has a closed form); the terms are `loss`, `recon`
    and `kl`. The decoder takes log_0(z), the tangent vector at the origin, into the ordinary decoder of the
    backbone (simpler than the paper's gyroplane layer, and every backbone works); `decode` applies log_0
    itself, so decode(code(x)) is the reconstruction. `negative_log_likelihood` estimates -log p(x) by
    importance sampling with q as proposal; `test` reports it with the Bernoulli likelihood.

    Args:
        posterior: `wrapped` (N_W: a normal in the tangent space at the origin, transported to mu and mapped
            onto the ball; reparameterised exactly) or `riemannian` (N_R, density exp(-d(mu, z)^2 /
            (2 sigma^2)) / Z(sigma): a rejection-sampled radius, see `riemannian_normal_sample` for its
            gradient).
        curvature: c > 0: the ball has curvature -c and radius 1 / sqrt(c).
        prior_std: the prior's scale sigma (its draws lie about sigma sqrt(D) from the origin for the wrapped
            normal, about (D - 1) sqrt(c) sigma^2 for the Riemannian normal).
        beta: weight of the KL term (1 gives the ELBO).
        kl_warmup_steps: the KL weight in training rises linearly from 0 to beta over this many optimizer
            steps; 0 uses beta from the start. Evaluation always uses beta.
        nll_samples: importance samples per test image for `test/nll` (Bernoulli likelihood only); 0 turns
            it off. They are decoded in chunks, so memory does not grow with it.
        **kwargs: the arguments of `Autoencoder`.
    """

    #: the score is the negative ELBO, not a reconstruction error
    scores_by_reconstruction = False

    latent_space = "poincare_ball"

    evaluation_arguments = ("nll_samples",)

    def __init__(
        self,
        posterior: Posterior = "wrapped",
        curvature: float = 1.0,
        prior_std: float = 1.0,
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        nll_samples: int = 1000,
        **kwargs: Any,
    ) -> None:
        if posterior not in POSTERIORS:
            raise ConfigError(f"posterior must be 'wrapped' or 'riemannian', got {posterior!r}")
        if not 0 < curvature < math.inf:
            raise ConfigError(f"curvature must be a finite c > 0 (the ball of curvature -c), got {curvature}")
        if not 0 < prior_std < math.inf:
            raise ConfigError(f"prior_std must be finite and > 0 (the scale of the prior), got {prior_std}")
        check_elbo_arguments(beta, kl_warmup_steps, nll_samples)
        self.posterior = posterior  # before the base builds the encoder (`encoder_outputs`)
        super().__init__(**kwargs)
        self.curvature, self.prior_std = float(curvature), float(prior_std)
        self.beta, self.kl_warmup_steps, self.nll_samples = beta, kl_warmup_steps, nll_samples
        self._check_prior_fits_the_ball()
        dim = self.latent_dim
        generator = torch.Generator().manual_seed(SCORE_NOISE_SEED)
        # the anomaly score's fixed draws, the same for every image: moved with the model, not saved
        if posterior == "wrapped":
            self.register_buffer("score_normal", score_noise(SCORE_SAMPLES, dim)[:, None], persistent=False)
        else:
            noise = riemannian_noise((SCORE_SAMPLES, 1), dim, generator=generator)
            for name, part in zip(RiemannianNoise._fields, noise, strict=True):
                self.register_buffer(f"score_{name}", part, persistent=False)
            closed, series = normalizer_constants(dim)
            self.register_buffer("normalizer_closed", closed.clone(), persistent=False)
            self.register_buffer("normalizer_series", series.clone(), persistent=False)
            sigma = torch.tensor(self.prior_std, dtype=torch.float64)
            self.prior_log_normalizer = riemannian_log_normalizer(sigma, dim, self.curvature).item()

    def _check_prior_fits_the_ball(self) -> None:
        """Refuses a prior whose draws lie farther from the origin than float32 coordinates hold."""
        sigma, dim, c = self.prior_std, self.latent_dim, self.curvature
        if self.posterior == "wrapped":
            typical = sigma * math.sqrt(dim)
        else:  # the centre of the radius proposals: about the mode
            normal = torch.zeros(1, dtype=torch.float64)
            typical = radius_proposals(torch.tensor(sigma, dtype=torch.float64), dim, c, normal)[0].item()
        limit = 2 * math.atanh(1 - BALL_EPS[torch.float32]) / math.sqrt(c)
        if typical + 2 * sigma > limit:
            raise ConfigError(
                f"the {self.posterior} prior with prior_std {sigma} in {dim} dimensions puts its draws about "
                f"{typical:.1f} from the origin, beyond the {limit:.1f} that float32 holds on the ball of "
                f"curvature -{c}: lower prior_std, curvature or latent_dim"
            )

    def encoder_outputs(self) -> int:
        return self.latent_dim + (self.latent_dim if self.posterior == "wrapped" else 1)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) -> (mu (B, D) on the ball, sigma (B, D) wrapped or (B,) Riemannian), in float32+."""
        out = float32_at_least(self.encoder(x))
        mu = exp_map0(out[:, : self.latent_dim], self.curvature)
        sigma = F.softplus(out[:, self.latent_dim :]) + MIN_STD
        return mu, (sigma if self.posterior == "wrapped" else sigma[:, 0])

    def code(self, x: Tensor) -> Tensor:
        """The centre mu of q, (B, latent_dim) on the ball, in the model's dtype: what `decode` takes."""
        out = float32_at_least(self.encoder(x))
        return exp_map0(out[:, : self.latent_dim], self.curvature).to(self.dtype)

    def decode_raw(self, z: Tensor) -> Tensor:
        """The decoder's raw output for points on the ball (B, D): the decoder reads log_0(z)."""
        return self.decoder(log_map0(float32_at_least(z), self.curvature).to(self.dtype))

    def decode(self, z: Tensor) -> Tensor:
        """Points on the ball (B, latent_dim) -> the output mean, (B, C, H, W)."""
        return self.output_mean(self.decode_raw(z))

    def kl_weight(self) -> float:
        """The KL weight at training step `step`: beta * min(1, step / kl_warmup_steps)."""
        return warmed_up(self.beta, self.kl_warmup_steps, self.step)

    def posterior_noise(self, shape: tuple[int, ...]) -> Tensor | RiemannianNoise:
        """Fresh noise of posterior draws of `shape` (e.g. (count, B)), on the model's device."""
        if self.posterior == "wrapped":
            return torch.randn(*shape, self.latent_dim, device=self.device)
        return riemannian_noise(shape, self.latent_dim, device=self.device)

    def posterior_sample(self, mu: Tensor, sigma: Tensor, noise: Tensor | RiemannianNoise) -> Tensor:
        """Reparameterised draws of q(z | x) made from `noise`: (*S, D) on the ball."""
        if isinstance(noise, RiemannianNoise):
            return riemannian_normal_sample(mu, sigma, noise, self.curvature)
        return wrapped_normal_sample(mu, sigma, noise.to(mu.dtype), self.curvature)

    def log_posterior(self, z: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
        """log q(z | x) of points (..., B, D) for the posterior's (mu, sigma) of each image: (..., B)."""
        if self.posterior == "wrapped":
            return wrapped_normal_log_density(z, mu, sigma, self.curvature)
        constants = (self.normalizer_closed, self.normalizer_series)
        return riemannian_normal_log_density(z, mu, sigma, self.curvature, constants)

    def log_prior(self, z: Tensor) -> Tensor:
        """log p(z) of points (..., D) -> (...), float32 at least: the posterior's family at the origin."""
        z = float32_at_least(z)
        origin = torch.zeros_like(z)
        if self.posterior == "wrapped":
            return wrapped_normal_log_density(z, origin, self.prior_std, self.curvature)
        radius = distance(origin, z, self.curvature)
        return -radius.square() / (2 * self.prior_std**2) - self.prior_log_normalizer

    def posterior_draw(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """mu, sigma of q(z | x), one reparameterised draw z (B, D) and the reconstruction term there (B,)."""
        mu, sigma = self.encode(batch.inputs)
        z = self.posterior_sample(mu, sigma, self.posterior_noise(mu.shape[:1]))
        return mu, sigma, z, self.reconstruction_loss(self.decode_raw(z), batch.inputs)

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        mu, sigma, z, recon = self.posterior_draw(batch)
        kl = self.log_posterior(z, mu, sigma) - self.log_prior(z)
        # the warm-up schedules training only: evaluation weighs the KL by beta, as the VAE does
        weight = self.kl_weight() if self.training else self.beta
        return {"loss": recon + weight * kl, "recon": recon, "kl": kl}

    def log_weights(self, batch: Batch, num_samples: int, chunk_size: int | None = None) -> Tensor:
        """log p(x | z_i) + log p(z_i) - log q(z_i | x) for `num_samples` posterior draws z_i of each image:
        (num_samples, B). The draws are decoded `chunk_size` at a time (default: as many as keep a chunk's
        outputs, or its sampler's proposals, under 2^24 numbers)."""
        mu, sigma = self.encode(batch.inputs)

        def weigh(count: int, targets: Tensor) -> tuple[Tensor, Tensor]:
            z = self.posterior_sample(mu, sigma, self.posterior_noise((count, mu.shape[0])))  # (count, B, D)
            recon = self.reconstruction_loss(self.decode_raw(z.flatten(0, 1)), targets).view(count, -1)
            return -recon + self.log_prior(z) - self.log_posterior(z, mu, sigma), recon

        draw_numbers = PROPOSALS + self.latent_dim  # the sampler's proposals, when more than the outputs
        return importance_chunks(batch.inputs, num_samples, chunk_size, weigh, draw_numbers)[0]

    @torch.no_grad()
    def negative_log_likelihood(
        self, batch: Batch, num_samples: int, chunk_size: int | None = None
    ) -> Tensor:
        """-log p(x) in nats from `num_samples` importance samples (the k-sample IWAE bound): (B,)."""
        return -iwae_bound(self.log_weights(batch, num_samples, chunk_size))

    def reports_likelihood(self) -> bool:
        return self.nll_samples > 0 and self.likelihood == "bernoulli"

    def anomaly_score(self, batch: Batch) -> Tensor:
        """Negative ELBO of each image (beta = 1): recon + log q - log p averaged over `SCORE_SAMPLES`
        posterior draws made from fixed noise (seeded, the same for every image), so that an image always gets
        the same score, here and in an exported scorer: (B,)."""
        mu, sigma = self.encode(batch.inputs)
        if self.posterior == "wrapped":
            noise: Tensor | RiemannianNoise = self.score_normal
        else:
            noise = RiemannianNoise(self.score_normal, self.score_uniform, self.score_direction)
        z = self.posterior_sample(mu, sigma, noise)  # (S, B, D)
        samples = z.shape[0]
        targets = batch.inputs.repeat(samples, *[1] * (batch.inputs.ndim - 1))
        recon = self.reconstruction_loss(self.decode_raw(z.flatten(0, 1)), targets).view(samples, -1)
        return (recon + self.log_posterior(z, mu, sigma) - self.log_prior(z)).mean(0)

    def prior_sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """`num_samples` prior draws on the ball, (num_samples, latent_dim) in float32 at least, on the
        model's device; `generator` (a CPU generator) makes them repeatable."""
        dim, c = self.latent_dim, self.curvature
        like = {"device": self.device, "dtype": torch.promote_types(self.dtype, torch.float32)}
        if self.posterior == "wrapped":
            where = generator.device if generator is not None else self.device  # no copy without a generator
            normal = torch.randn(num_samples, dim, generator=generator, device=where).to(**like)
            return wrapped_normal_sample(torch.zeros_like(normal), self.prior_std, normal, c)
        noise = riemannian_noise((num_samples,), dim, generator=generator, device=self.device)
        sigma = torch.full((num_samples,), self.prior_std, **like)
        return riemannian_normal_sample(torch.zeros(dim, **like), sigma, noise, c)

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        return self.decode(self.prior_sample(num_samples, generator))

    def training_metrics(self) -> dict[str, Tensor | float]:
        return {"kl_weight": self.kl_weight()}
