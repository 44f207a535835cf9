"""Codes drawn where an RHVAE's learnt metric says the data are: Hamiltonian Monte Carlo on the inverse of the
metric's volume element (Chadebec & Allassonnière, "Data generation in low sample size setting using
manifold sampling and a geometry-aware VAE", 2021; Chadebec et al., "Data augmentation in high dimensional
low sample size setting using a geometry-based variational autoencoder", IEEE TPAMI 2022; pythae's
RHVAESampler)."""

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ae_lightning.autoencoders import Autoencoder
from ae_lightning.autoencoders.rhvae import RHVAE
from ae_lightning.autoencoders.rhvae_metric import CentroidMetric, log_det_inverse
from ae_lightning.errors import ConfigError
from ae_lightning.nets.sampling import standard_normal
from ae_lightning.samplers.base import Sampler

#: z (B, D) -> log pi(z) up to a constant (B,) and its gradient (B, D)
LogTarget = Callable[[Tensor], tuple[Tensor, Tensor]]
#: where the chains start
STARTS = ("centroids", "prior")


def volume_log_target(metric: CentroidMetric) -> LogTarget:
    """log pi(z) = (1/2) log det G^{-1}(z) = -log sqrt(det G(z)), the log of the inverse volume element, and
    its gradient -d/dz (1/2) log det G(z) in closed form (`CentroidMetric.log_det_gradient`)."""

    def log_target(z: Tensor) -> tuple[Tensor, Tensor]:
        at = metric.at(z)
        return 0.5 * log_det_inverse(at), -metric.log_det_gradient(z, at)

    return log_target


def momentum_scales(beta_zero: float, n_lf: int) -> list[float]:
    """sqrt(beta_(k-1) / beta_k) for k = 1..n_lf, the quadratic scheme of the HVAE's `tempering_schedule`
    (1 / sqrt(beta_k) = (1 - 1 / sqrt(beta_0)) k^2 / K^2 + 1 / sqrt(beta_0)) in host numbers."""
    inverse_sqrt = [(1 - beta_zero**-0.5) * (k / n_lf) ** 2 + beta_zero**-0.5 for k in range(n_lf + 1)]
    return [inverse_sqrt[k] / inverse_sqrt[k - 1] for k in range(1, n_lf + 1)]


def hamiltonian_monte_carlo(
    z: Tensor,
    log_target: LogTarget,
    gammas: Tensor,
    uniforms: Tensor,
    n_lf: int,
    eps_lf: float,
    beta_zero: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """len(gammas) HMC moves towards pi of chains started at z (B, D). Each move: momenta rho = gamma /
    sqrt(beta_0) (gammas (S, B, D) standard normal); `n_lf` leapfrog steps of size `eps_lf` with the identity
    mass, rho multiplied by sqrt(beta_(k-1) / beta_k) after step k (the HVAE's tempering, up to beta_K = 1);
    then the proposal accepted where log u < H(z, rho) - H(z', rho'), H = -log pi + |rho|^2 / 2 (uniforms
    (S, B)), all chains at once with tensor ops. With beta_0 = 1 this is plain HMC, which leaves pi invariant;
    with beta_0 < 1 the tempered trajectory is not reversible and the chain only approximates pi (as
    pythae's). A proposal whose energy is not finite is rejected.

    Returns the chains' last states (B, D) and the fraction of steps each accepted (B,)."""
    log_p, grad = log_target(z)
    scales = momentum_scales(beta_zero, n_lf)
    accepted = torch.zeros(z.shape[0], device=z.device)
    for gamma, uniform in zip(gammas, uniforms, strict=True):
        rho = gamma / beta_zero**0.5
        start_energy = -log_p + 0.5 * rho.square().sum(1)
        new_z, new_log_p, new_grad = z, log_p, grad
        for scale in scales:
            rho = rho + 0.5 * eps_lf * new_grad
            new_z = new_z + eps_lf * rho
            new_log_p, new_grad = log_target(new_z)
            rho = (rho + 0.5 * eps_lf * new_grad) * scale
        energy = -new_log_p + 0.5 * rho.square().sum(1)
        accept = uniform.log() < start_energy - energy  # False where the energy is NaN
        z = torch.where(accept[:, None], new_z, z)
        log_p = torch.where(accept, new_log_p, log_p)
        grad = torch.where(accept[:, None], new_grad, grad)
        accepted = accepted + accept.float()
    return z, accepted / max(len(gammas), 1)


class RHVAESampler(Sampler):
    """Draws an RHVAE's codes from pi(z) proportional to sqrt(det G^{-1}(z)), the inverse of the volume
    element of its learnt metric G (`RHVAE.stored_metric`, the one its evaluation uses): large where the
    training codes are (there G^{-1} = sum_i L_i L_i^T exp(-|z - c_i|^2 / T^2) + lambda I is large), flat at
    lambda^(D/2) far from them. This is what pythae samples and what Chadebec et al. propose rather than the
    Riemannian uniform distribution sqrt(det G(z)), which is largest far from the data; the papers restrict pi
    to a compact set to make it proper, which neither pythae nor this sampler does: the chains start on the
    training centroids (or at prior draws) and run a fixed number of steps.

    Each of `mcmc_steps` steps is one HMC move of all chains at once (`hamiltonian_monte_carlo`): `n_lf`
    leapfrog steps of size `eps_lf`, momenta drawn with inverse temperature `beta_zero` and tempered to 1
    along the trajectory, then a Metropolis accept/reject per chain as a tensor op. The draws are made at
    once (from a CPU generator, repeatably); nothing waits for the device. Nothing is fitted: the metric is
    the model's, its centroids the ring the model filled in training (an untrained model's ring is empty: the
    chains start at 0 in a flat pi).

    Args:
        latent_dim: size of the codes.
        mcmc_steps: HMC moves per draw (pythae: 100).
        n_lf: leapfrog steps per move (pythae: 15).
        eps_lf: leapfrog step size (pythae: 0.03).
        beta_zero: inverse temperature of the momenta, in (0, 1] (pythae: 1, no tempering; below 1 the
            moves are tempered as pythae's and leave pi invariant only approximately).
        start: "centroids", each chain on a training centroid chosen uniformly (pythae), or "prior", on a
            N(0, I) draw.
    """

    name = "rhvae"

    def __init__(
        self,
        latent_dim: int,
        mcmc_steps: int = 100,
        n_lf: int = 15,
        eps_lf: float = 0.03,
        beta_zero: float = 1.0,
        start: str = "centroids",
    ) -> None:
        super().__init__(latent_dim)
        if mcmc_steps < 1 or n_lf < 1 or not eps_lf > 0:
            raise ConfigError(
                f"rhvae needs mcmc_steps >= 1, n_lf >= 1 and eps_lf > 0, got {mcmc_steps}, {n_lf}, {eps_lf}"
            )
        if not 0 < beta_zero <= 1:
            raise ConfigError(f"rhvae needs beta_zero in (0, 1] (1: no tempering), got {beta_zero}")
        if start not in STARTS:
            raise ConfigError(f"rhvae's start must be one of {', '.join(STARTS)}, got {start!r}")
        self.mcmc_steps, self.n_lf, self.eps_lf = mcmc_steps, n_lf, eps_lf
        self.beta_zero, self.start = beta_zero, start
        #: the fraction of moves each chain of the last draw accepted, (num_samples,) on the device
        self.acceptance: Tensor | None = None

    @classmethod
    def refusal(cls, model: Autoencoder) -> str | None:
        if not isinstance(model, RHVAE):
            return f"the rhvae sampler draws with an RHVAE's learnt metric; {type(model).__name__} has none"
        return None

    def options(self) -> dict[str, Any]:
        return {
            "mcmc_steps": self.mcmc_steps,
            "n_lf": self.n_lf,
            "eps_lf": self.eps_lf,
            "beta_zero": self.beta_zero,
            "start": self.start,
        }

    def starting_points(self, model: RHVAE, num_samples: int, generator: torch.Generator | None) -> Tensor:
        """Where the chains start, (num_samples, latent_dim) float32 on the model's device."""
        device = model.metric_centroids.device
        if self.start == "prior":
            return standard_normal((num_samples, self.latent_dim), generator, device, torch.float32)
        if generator is None:
            uniform = torch.rand(num_samples, device=device)
        else:
            uniform = torch.rand(num_samples, generator=generator).to(device)
        # the ring's written slots are 0 .. filled - 1; chosen on the device, without reading `filled`
        filled = model.metric_filled.clamp(min=1)
        slots = (uniform * filled).long().clamp(max=filled - 1)
        return model.metric_centroids[slots].float()

    @torch.no_grad()
    def sample_codes(
        self, model: Autoencoder, num_samples: int, generator: torch.Generator | None = None
    ) -> Tensor:
        assert isinstance(model, RHVAE)
        z = self.starting_points(model, num_samples, generator)
        shape = (self.mcmc_steps, num_samples, self.latent_dim)
        gammas = standard_normal(shape, generator, z.device, torch.float32)
        if generator is None:
            uniforms = torch.rand(shape[:2], device=z.device)
        else:
            uniforms = torch.rand(shape[:2], generator=generator).to(z.device)
        with torch.autocast(z.device.type, enabled=False):  # the metric's Cholesky factors in float32
            log_target = volume_log_target(model.stored_metric())
            z, self.acceptance = hamiltonian_monte_carlo(
                z, log_target, gammas, uniforms, self.n_lf, self.eps_lf, self.beta_zero
            )
        return z
