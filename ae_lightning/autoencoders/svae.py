"""The hyperspherical VAE (Davidson, Falorsi, De Cao, Kipf & Tomczak, 2018): a von Mises-Fisher posterior on
the unit sphere S^{D-1} in R^D and the uniform prior on it, with the vMF density, KL and sampler."""

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ae_lightning.autoencoders.base import Autoencoder
from ae_lightning.autoencoders.bessel import log_bessel_reduced
from ae_lightning.autoencoders.interface import Generative, LogLikelihood
from ae_lightning.autoencoders.vae import (
    SCORE_NOISE_SEED,
    SCORE_SAMPLES,
    check_elbo_arguments,
    importance_chunks,
    iwae_bound,
    warmed_up,
)
from ae_lightning.batch import Batch
from ae_lightning.errors import ConfigError
from ae_lightning.nets import first_accepted
from ae_lightning.nets.sampling import standard_normal

#: proposals of Wood's rejection sampler drawn at once per sample. Its acceptance rate is above 0.65 for
#: every dimension and concentration (lowest for D = 2 and large kappa), so all 32 are rejected with
#: probability below 0.35^32 ~ 1e-15; such a sample takes the last proposal (`first_accepted`)
PROPOSALS = 32


def log_sphere_area(dim: int) -> float:
    """log of the area of the unit sphere S^{dim-1} in R^dim, 2 pi^{dim/2} / Gamma(dim/2)."""
    return math.log(2) + 0.5 * dim * math.log(math.pi) - math.lgamma(0.5 * dim)


def _at_least_float32(x: Tensor) -> Tensor:
    """`x` in float32, or float64 if it is: the vMF terms are never computed in bfloat16."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def vmf_log_normalizer(kappa: Tensor, dim: int) -> Tensor:
    """log C_D(kappa) = (D/2 - 1) log kappa - (D/2) log(2 pi) - log I_{D/2-1}(kappa), shaped as kappa."""
    kappa = _at_least_float32(kappa)
    reduced, _ = log_bessel_reduced(0.5 * dim - 1, kappa)
    # log C_D + log area(S^{D-1}) = -(log I_v - v log(kappa / 2) + log Gamma(v + 1)), v = D/2 - 1
    return -reduced - kappa - log_sphere_area(dim)


def vmf_log_density(z: Tensor, mu: Tensor, kappa: Tensor) -> Tensor:
    """log vMF(z; mu, kappa) = log C_D(kappa) + kappa mu.z for unit vectors z, mu (..., D) and kappa (...)."""
    kappa, dim = _at_least_float32(kappa), mu.shape[-1]
    reduced, _ = log_bessel_reduced(0.5 * dim - 1, kappa)
    # log C_D + kappa mu.z = (log C_D + kappa) - kappa |z - mu|^2 / 2: nothing of size kappa cancels
    distance = (_at_least_float32(z) - _at_least_float32(mu)).square().sum(-1)
    return -reduced - log_sphere_area(dim) - 0.5 * kappa * distance


def vmf_kl(kappa: Tensor, dim: int) -> Tensor:
    """KL(vMF(mu, kappa) || Uniform(S^{D-1})) = kappa A_D(kappa) + log C_D(kappa) + log area(S^{D-1}),
    A_D = I_{D/2} / I_{D/2-1}, shaped as kappa (the same for every mu), in float32 at least."""
    kappa = _at_least_float32(kappa)
    reduced, log_ratio = log_bessel_reduced(0.5 * dim - 1, kappa)
    # = kappa (A - 1) - (the reduced log I_v): two terms of moderate size whatever kappa
    return kappa * torch.expm1(log_ratio) - reduced


class VMFNoise(NamedTuple):
    """The randomness of `PROPOSALS` draws of Wood's sampler for samples of shape S (which broadcast)."""

    beta: Tensor  #: (P, *S) Beta((D-1)/2, (D-1)/2) proposals
    uniform: Tensor  #: (P, *S) uniforms of their acceptance tests
    tangent: Tensor  #: (*S, D-1) standard normals: the direction orthogonal to mu


def vmf_noise(
    shape: Sequence[int],
    dim: int,
    proposals: int = PROPOSALS,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> VMFNoise:
    """Draws the noise of vMF samples of `shape` on S^{dim-1}, on `device`; `generator` makes it repeatable
    (drawn where the generator lives, then moved). Beta((D-1)/2, (D-1)/2) is (1 + x_1) / 2 for x uniform on
    S^{D-1}: normals, which any generator draws."""
    where = generator.device if generator is not None else device
    normals = torch.randn(proposals, *shape, dim, generator=generator, device=where)
    beta = 0.5 * (1 + normals[..., 0] / normals.norm(dim=-1))
    uniform = torch.rand(proposals, *shape, generator=generator, device=where)
    tangent = torch.randn(*shape, dim - 1, generator=generator, device=where)
    if device is None:
        return VMFNoise(beta, uniform, tangent)
    return VMFNoise(beta.to(device), uniform.to(device), tangent.to(device))


def wood_accepts(kappa: Tensor, dim: int, beta: Tensor, uniform: Tensor) -> Tensor:
    """Wood's (1994) acceptance test of the proposals `beta` with their `uniform`s, for concentrations kappa
    (all broadcast) on S^{dim-1}: bool, the broadcast shape."""
    m1 = dim - 1.0
    root = torch.sqrt(4 * kappa.square() + m1**2)
    b = m1 / (2 * kappa + root)  # (-2 kappa + root) / (D - 1), without cancellation for large kappa
    a = (m1 + 2 * kappa + root) / 4
    t = 2 * a * b / (1 - (1 - b) * beta)
    d = 4 * a * b / (1 + b) - m1 * math.log(m1)
    return m1 * torch.log(t) - t + d >= torch.log(uniform)


def vmf_sample_from_noise(mu: Tensor, kappa: Tensor, noise: VMFNoise) -> Tensor:
    """vMF samples z (*S, D) on the sphere for mean directions mu (..., D) and concentrations kappa (...) that
    broadcast with the noise's shape S; reparameterised: differentiable in mu and kappa.

    Wood's (1994) sampler: w = mu.z from the first accepted of the proposals (picked on the device, no
    loop), then z = w e1 + sqrt(1 - w^2) v with v uniform on the sphere orthogonal to e1, and the Householder
    reflection that takes e1 to mu. The gradient in kappa flows through w at the accepted proposal (Davidson
    et al.'s g_rep); their correction g_cor, for the dependence of the acceptance on kappa, is left out, as
    in their implementation (they show it is small).
    """
    mu, kappa = _at_least_float32(mu), _at_least_float32(kappa)
    beta, uniform, tangent = (part.to(mu.dtype) for part in noise)
    dim = mu.shape[-1]
    with torch.no_grad():  # the acceptance is a choice, not differentiated
        accepted = wood_accepts(kappa, dim, beta, uniform)  # (P, *S)
        shape = accepted.shape
        chosen, _ = first_accepted(beta.expand(shape).reshape(shape[0], -1), accepted.reshape(shape[0], -1))
    beta = chosen.view(shape[1:])
    b = (dim - 1) / (2 * kappa + torch.sqrt(4 * kappa.square() + (dim - 1) ** 2))
    # 1 - w = 2 b eps / (1 - (1 - b) eps): written out, it keeps its digits when w is near 1
    one_minus_w = 2 * b * beta / (1 - (1 - b) * beta)
    sine = torch.sqrt((one_minus_w * (2 - one_minus_w)).clamp_min(1e-30))  # sqrt(1 - w^2)
    direction = F.normalize(tangent, dim=-1)
    z = torch.cat([(1 - one_minus_w)[..., None], sine[..., None] * direction], -1)
    # the reflection I - 2 u u^T / |u|^2, u = e1 - mu, maps e1 to mu; for mu = e1 it is the identity
    u = torch.cat([1 - mu[..., :1], -mu[..., 1:]], -1)
    norm_square = u.square().sum(-1, keepdim=True)
    aligned = norm_square == 0
    reflected = z - 2 * u * (u * z).sum(-1, keepdim=True) / torch.where(aligned, 1.0, norm_square)
    return torch.where(aligned, z, reflected)


def vmf_sample(
    mu: Tensor, kappa: Tensor, generator: torch.Generator | None = None, proposals: int = PROPOSALS
) -> Tensor:
    """A reparameterised vMF sample for each mean direction mu (..., D) and concentration kappa (...):
    (..., D), unit vectors (see `vmf_sample_from_noise`)."""
    noise = vmf_noise(kappa.shape, mu.shape[-1], proposals, generator, mu.device)
    return vmf_sample_from_noise(mu, kappa, noise)


class SVAE(Autoencoder, Generative, LogLikelihood):
    """Hyperspherical VAE: a von Mises-Fisher posterior on the unit sphere S^{D-1} (D = latent_dim) and the
    uniform prior on it, which unlike N(0, I) has no pull towards the origin (Davidson et al., 2018).

    The encoder gives D + 1 numbers: the mean direction mu (the first D, normalised: the code) and the
    concentration kappa = softplus(last) + 1. The loss is recon(x | z) + beta * KL with z a reparameterised
    vMF sample and the KL in closed form; the terms are `loss`, `recon`, `kl` and `kappa`.
    `negative_log_likelihood` estimates -log p(x) by importance sampling with the vMF as proposal; `test`
    reports it with the Bernoulli likelihood. The decoder takes points on the sphere.

    Args:
        beta: weight of the KL term (1 gives the ELBO).
        kl_warmup_steps: the KL weight in training rises linearly from 0 to beta over this many optimizer
            steps; 0 uses beta from the start. Evaluation always uses beta.
        nll_samples: importance samples per test image for `test/nll` (Bernoulli likelihood only); 0 turns
            it off. They are decoded in chunks, so memory does not grow with it.
        **kwargs: the arguments of `Autoencoder`; latent_dim >= 2.
    """

    #: the score is the negative ELBO, not a reconstruction error
    scores_by_reconstruction = False

    latent_space = "sphere"

    evaluation_arguments = ("nll_samples",)

    def __init__(
        self, beta: float = 1.0, kl_warmup_steps: int = 0, nll_samples: int = 1000, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if self.latent_dim < 2:
            raise ConfigError(
                f"SVAE needs latent_dim >= 2 (the sphere S^0 of latent_dim 1 is two points), got "
                f"{self.latent_dim}: set --model.latent_dim 2 or more"
            )
        check_elbo_arguments(beta, kl_warmup_steps, nll_samples)
        self.beta = beta
        self.kl_warmup_steps = kl_warmup_steps
        self.nll_samples = nll_samples
        # the anomaly score's fixed draws, the same for every image: moved with the model, not saved
        generator = torch.Generator().manual_seed(SCORE_NOISE_SEED)
        noise = vmf_noise((SCORE_SAMPLES, 1), self.latent_dim, generator=generator)
        for name, part in zip(VMFNoise._fields, noise, strict=True):
            self.register_buffer(f"score_{name}", part, persistent=False)

    def encoder_outputs(self) -> int:
        return self.latent_dim + 1

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) -> (mu (B, latent_dim) unit vectors, kappa (B,) >= 1), in float32 at least."""
        out = _at_least_float32(self.encoder(x))
        return F.normalize(out[:, :-1], dim=1), F.softplus(out[:, -1]) + 1

    def code(self, x: Tensor) -> Tensor:
        """The mean direction mu, (B, latent_dim) unit vectors, in the model's dtype (what `decode` takes)."""
        return self.encode(x)[0].to(self.dtype)

    def kl_weight(self) -> float:
        """The KL weight at training step `step`: beta * min(1, step / kl_warmup_steps)."""
        return warmed_up(self.beta, self.kl_warmup_steps, self.step)

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        mu, kappa = self.encode(batch.inputs)
        z = vmf_sample(mu, kappa)
        recon = self.reconstruction_loss(self.decoder(z.to(self.dtype)), batch.inputs)
        kl = vmf_kl(kappa, self.latent_dim)
        # the warm-up schedules training only: evaluation weighs the KL by beta, as the VAE does
        weight = self.kl_weight() if self.training else self.beta
        return {"loss": recon + weight * kl, "recon": recon, "kl": kl, "kappa": kappa}

    def log_weights(self, batch: Batch, num_samples: int, chunk_size: int | None = None) -> Tensor:
        """log p(x | z_i) + log p(z_i) - log q(z_i | x) for `num_samples` vMF draws z_i of each image:
        (num_samples, B). The draws are decoded `chunk_size` at a time (default: as many as keep a chunk's
        outputs under 2^24 numbers)."""
        mu, kappa = self.encode(batch.inputs)
        log_prior = -log_sphere_area(self.latent_dim)

        def weigh(count: int, targets: Tensor) -> tuple[Tensor, Tensor]:
            z = vmf_sample(mu.expand(count, *mu.shape), kappa.expand(count, *kappa.shape))  # (count, B, D)
            decoded = self.decoder(z.flatten(0, 1).to(self.dtype))
            recon = self.reconstruction_loss(decoded, targets).view(count, -1)
            return -recon + log_prior - vmf_log_density(z, mu, kappa), recon

        # a chunk's decoder outputs, or its sampler's proposals, under 2^24 numbers
        draw_numbers = PROPOSALS * self.latent_dim
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
        """Negative ELBO of each image (beta = 1), its reconstruction term averaged over `SCORE_SAMPLES` vMF
        draws made from fixed noise (seeded, the same for every image), so that an image always gets the same
        score, here and in an exported scorer: (B,)."""
        mu, kappa = self.encode(batch.inputs)
        noise = VMFNoise(self.score_beta, self.score_uniform, self.score_tangent)
        z = vmf_sample_from_noise(mu[None], kappa[None], noise)  # (S, B, D)
        samples = z.shape[0]
        targets = batch.inputs.repeat(samples, *[1] * (batch.inputs.ndim - 1))
        decoded = self.decoder(z.flatten(0, 1).to(self.dtype))
        recon = self.reconstruction_loss(decoded, targets).view(samples, -1).mean(0)
        return recon + vmf_kl(kappa, self.latent_dim)

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """Images decoded from `num_samples` draws of the uniform prior on the sphere (normalised normals)."""
        z = standard_normal((num_samples, self.latent_dim), generator, self.device, torch.float32)
        return self.decode(F.normalize(z, dim=1).to(self.dtype))

    def training_metrics(self) -> dict[str, Tensor | float]:
        return {"kl_weight": self.kl_weight()}
