"""The Hamiltonian variational autoencoder (Caterini, Doucet & Sejdinovic, 2018)."""

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ae_lightning.autoencoders.vae import (
    VAE,
    gaussian_kl,
    gaussian_log_density,
    importance_chunks,
    reparameterize,
)
from ae_lightning.batch import Batch
from ae_lightning.errors import ConfigError

#: z -> (dU/dz (B, D), anything the caller wants back from the last call): what the integrator evaluates
PotentialGradient = Callable[[Tensor], tuple[Tensor, Any]]


def tempering_schedule(beta_zero: Tensor, n_steps: int) -> Tensor:
    """The inverse temperatures beta_0..beta_K of the quadratic scheme, (K + 1,):
    1 / sqrt(beta_k) = (1 - 1 / sqrt(beta_0)) k^2 / K^2 + 1 / sqrt(beta_0), from beta_0 up to beta_K = 1."""
    k = torch.arange(n_steps + 1, dtype=beta_zero.dtype, device=beta_zero.device)
    inverse_sqrt = (1 - beta_zero.rsqrt()) * (k / n_steps).square() + beta_zero.rsqrt()
    return inverse_sqrt.pow(-2)


def tempering_log_det(beta_zero: Tensor, latent_dim: int) -> Tensor:
    """log |det| of the K momentum rescalings rho <- sqrt(beta_{k-1} / beta_k) rho in D dimensions:
    (D / 2) sum_k log(beta_{k-1} / beta_k) = (D / 2) log beta_0, since beta_K = 1 (<= 0: they contract)."""
    return 0.5 * latent_dim * beta_zero.log()


def tempered_leapfrog(
    z: Tensor, rho: Tensor, step_size: Tensor, momentum_scales: Tensor, potential_gradient: PotentialGradient
) -> tuple[Tensor, Tensor, Any]:
    """len(momentum_scales) leapfrog steps of H(z, rho) = U(z) + rho.rho / 2 from (z, rho), each (B, D),
    with step sizes `step_size` (D,) or scalar, rho multiplied by momentum_scales[k] after step k.

    Returns z_K, rho_K and the second output of the last `potential_gradient` call (made at z_K). Each
    step's last gradient is the next step's first: K + 1 gradient evaluations in all."""
    grad, last = potential_gradient(z)
    for scale in momentum_scales:
        rho = rho - 0.5 * step_size * grad
        z = z + step_size * rho
        grad, last = potential_gradient(z)
        rho = (rho - 0.5 * step_size * grad) * scale
    return z, rho, last


class HVAE(VAE):
    """VAE whose posterior sample is moved by K tempered leapfrog steps of Hamiltonian dynamics towards
    the true posterior, a normalizing flow informed by the target p(x, z) (Caterini et al., 2018).

    z_0 ~ q_0(z | x) = N(mu, sigma^2) (the encoder's, reparameterised), rho_0 = gamma_0 / sqrt(beta_0) with
    gamma_0 ~ N(0, I). Step k = 1..K is one leapfrog step of H(z, rho) = -log p(x, z) + rho.rho / 2 with
    step sizes eps (one per latent unit), then rho <- sqrt(beta_{k-1} / beta_k) rho, with the quadratic
    tempering scheme of the paper (section 4)

        1 / sqrt(beta_k) = (1 - 1 / sqrt(beta_0)) k^2 / K^2 + 1 / sqrt(beta_0),   beta_K = 1.

    The leapfrog steps preserve volume and the rescalings change it by (D / 2) log beta_0 in all, so
    the ELBO estimate (reported as `elbo`; `loss` = -elbo) is

        log p(x, z_K) + log N(rho_K; 0, I) - log q_0(z_0 | x) - log N(rho_0; 0, I / beta_0)
            + (D / 2) log beta_0,

    which equals the paper's Algorithm 1 (the last two terms are -log N(gamma_0; 0, I)). log p(x | z) is
    minus the reconstruction term (for `gaussian` up to a constant). Also reported: `recon` (at z_K) and
    `kl`, the analytic KL of q_0 to the prior, for comparison with the VAE.

    dU/dz comes from autograd. In training mode with autograd on its graph is kept (create_graph), so the
    loss is differentiated through the flow; otherwise (evaluation mode, no_grad, inference mode) autograd
    is switched on locally for dU/dz alone and no graph is kept: the terms are values. The flow and the
    densities run in float32 with autocast off (a bfloat16 gradient keeps ~3 digits). A step costs K + 1
    decoder passes and as many gradients.

    `code(x)` is the posterior mean mu, `sample()` decodes prior draws, `anomaly_score` is the VAE's (the
    negative ELBO of q_0 with fixed noise: deterministic, and exportable, which a score through autograd
    would not be), and `negative_log_likelihood` the importance-sampling estimate with the model's own
    proposal, q_0 moved by the flow (as the paper's Table 2 and pythae): each draw's weight is the exponent of
    its ELBO estimate above, whose mean is p(x) because the flow is a bijection of known volume change, so the
    k-draw bound tightens to -log p(x) as k grows. Each draw costs a training step's K + 1 decoder passes.

    Args:
        n_leapfrog: K, leapfrog steps per sample.
        eps_lf: initial leapfrog step size (the same for every latent unit), > 0.
        beta_zero: initial inverse temperature beta_0 in (0, 1]; 1 turns tempering off.
        learn_eps: learn the step sizes (one per latent unit, as log eps: they stay positive).
        learn_beta_zero: learn beta_0 (as sigmoid(logit): it stays in (0, 1)); needs beta_zero < 1.
        **kwargs: the arguments of `VAE`; `beta` and `kl_warmup_steps` must stay at 1 and 0.
    """

    def __init__(
        self,
        n_leapfrog: int = 3,
        eps_lf: float = 0.001,
        beta_zero: float = 0.3,
        learn_eps: bool = True,
        learn_beta_zero: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if self.beta != 1.0 or self.kl_warmup_steps != 0:
            raise ConfigError(
                "HVAE has no KL weight: leave beta at 1 and kl_warmup_steps at 0 "
                f"(got beta {self.beta}, kl_warmup_steps {self.kl_warmup_steps}); use VAE for a beta-VAE"
            )
        if n_leapfrog < 1:
            raise ConfigError(f"n_leapfrog must be at least 1 (leapfrog steps of the flow), got {n_leapfrog}")
        if not eps_lf > 0:
            raise ConfigError(f"eps_lf must be > 0 (the initial leapfrog step size), got {eps_lf}")
        if not 0 < beta_zero <= 1:
            raise ConfigError(
                "beta_zero must lie in (0, 1] (the initial inverse temperature; 1: no tempering), "
                f"got {beta_zero}"
            )
        if learn_beta_zero and beta_zero == 1:
            raise ConfigError(
                "learn_beta_zero needs beta_zero < 1 (beta_0 is learnt as a sigmoid, which never reaches 1): "
                "start from e.g. beta_zero 0.3, or set learn_beta_zero false to train without tempering"
            )
        self.n_leapfrog = n_leapfrog
        self.learn_eps = learn_eps
        self.learn_beta_zero = learn_beta_zero
        log_step_size = torch.full((self.latent_dim,), math.log(eps_lf))
        if learn_eps:
            self.log_step_size = nn.Parameter(log_step_size)
        else:
            self.register_buffer("log_step_size", log_step_size)
        if learn_beta_zero:
            self.beta_zero_logit = nn.Parameter(torch.tensor(math.log(beta_zero / (1 - beta_zero))))
        else:
            self.register_buffer("fixed_beta_zero", torch.tensor(float(beta_zero)))

    def step_size(self) -> Tensor:
        """The leapfrog step size of each latent unit, (latent_dim,) float32."""
        return self.log_step_size.float().exp()

    def initial_inverse_temperature(self) -> Tensor:
        """beta_0, a float32 scalar in (0, 1]."""
        if self.learn_beta_zero:
            return torch.sigmoid(self.beta_zero_logit.float())
        return self.fixed_beta_zero.float()

    def potential_gradient(self, x: Tensor, create_graph: bool) -> PotentialGradient:
        """z (B, D) -> (dU/dz (B, D), the reconstruction term at z (B,)) for U(z) = -log p(x, z) of images x.

        Autograd is switched on here whatever the caller's mode: evaluation runs under no_grad or inference
        mode. Without `create_graph` the gradient is a value, and z a detached copy."""

        def gradient(z: Tensor) -> tuple[Tensor, Tensor]:
            with (
                torch.inference_mode(False),
                torch.enable_grad(),
                torch.autocast(z.device.type, enabled=False),
            ):
                if not (create_graph and z.requires_grad):
                    z = z.detach().clone().requires_grad_(True)  # a clone is no inference tensor
                recon = self.reconstruction_loss(self.decoder(z.to(self.dtype)), x)
                energy = recon - gaussian_log_density(z.float()).sum(1)
                (grad,) = torch.autograd.grad(energy.sum(), z, create_graph=create_graph)
            return grad.float(), recon if create_graph else recon.detach()

        return gradient

    def hamiltonian_elbo(self, batch: Batch) -> dict[str, Tensor]:
        """The one-sample HVAE ELBO of each image with its parts: `elbo`, `recon` (at z_K) and `kl` (of
        q_0), each (B,) float32."""
        create_graph = self.training and torch.is_grad_enabled()
        x = batch.inputs
        mu, logvar, _ = self.posterior(batch)
        mu, logvar = mu.float(), logvar.float()  # the flow in float32 under mixed precision
        z0 = reparameterize(mu, logvar)
        beta_zero = self.initial_inverse_temperature()
        rho0 = torch.randn_like(z0) * beta_zero.rsqrt()  # N(0, I / beta_0)
        betas = tempering_schedule(beta_zero, self.n_leapfrog)
        scales = (betas[:-1] / betas[1:]).sqrt()
        if x.is_inference():  # under inference mode: a copy autograd may save (BCE saves its target)
            with torch.inference_mode(False):
                x = x.clone()
        z, rho, recon = tempered_leapfrog(
            z0, rho0, self.step_size(), scales, self.potential_gradient(x, create_graph)
        )
        log_joint = -recon + gaussian_log_density(z).sum(1)
        log_target = log_joint + gaussian_log_density(rho).sum(1)
        log_initial = (
            gaussian_log_density(z0, mu, logvar).sum(1)
            + gaussian_log_density(rho0, 0.0, -beta_zero.log()).sum(1)
            - tempering_log_det(beta_zero, self.latent_dim)
        )
        return {"elbo": log_target - log_initial, "recon": recon, "kl": gaussian_kl(mu, logvar)}

    def log_weights(
        self, batch: Batch, num_samples: int, chunk_size: int | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The ELBO estimates of `num_samples` draws of the flow of each image (q_0, then K leapfrog steps),
        the log importance weights of -log p(x): (num_samples, B); with the reconstruction terms at z_K
        (num_samples, B), and mu and logvar (B, D) of q_0. The draws run `chunk_size` at a time, each chunk as
        one batch of the images repeated."""
        mu, logvar, _ = self.posterior(batch)

        def weigh(count: int, targets: Tensor) -> tuple[Tensor, Tensor]:
            terms = self.hamiltonian_elbo(Batch(targets))
            return terms["elbo"].view(count, -1), terms["recon"].view(count, -1)

        log_weights, recons = importance_chunks(batch.inputs, num_samples, chunk_size, weigh)
        return log_weights, recons, mu, logvar

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        terms = self.hamiltonian_elbo(batch)
        return {"loss": -terms["elbo"], **terms}

    def training_metrics(self) -> dict[str, Tensor | float]:
        return {
            "leapfrog_step_size": self.step_size().detach().mean(),
            "beta_zero": self.initial_inverse_temperature().detach(),
        }
