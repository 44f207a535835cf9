"""The Riemannian Hamiltonian VAE (Chadebec, Mantoux & Allassonnière, "Geometry-Aware Hamiltonian Variational
Auto-Encoder", IEEE TPAMI 2022): the HVAE's flow with a learnt metric in latent space."""

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ae_lightning.autoencoders.hvae import HVAE, PotentialGradient, tempering_log_det, tempering_schedule
from ae_lightning.autoencoders.rhvae_metric import (
    CentroidMetric,
    MetricAt,
    MetricNetwork,
    momentum_draw,
    momentum_log_density,
)
from ae_lightning.autoencoders.vae import VAE, gaussian_kl, gaussian_log_density, reparameterize
from ae_lightning.batch import Batch
from ae_lightning.errors import ConfigError


def _times(matrices: Tensor, vectors: Tensor) -> Tensor:
    """Each matrix times its vector: (B, D, D), (B, D) -> (B, D)."""
    return (matrices @ vectors[:, :, None])[:, :, 0]


def generalized_leapfrog(
    z: Tensor,
    rho: Tensor,
    step_size: Tensor,
    momentum_scales: Tensor,
    potential_gradient: PotentialGradient,
    metric: CentroidMetric,
    fixed_point_iterations: int,
) -> tuple[Tensor, Tensor, Any, MetricAt]:
    """len(momentum_scales) generalised leapfrog steps of the Riemannian Hamiltonian
    H(z, rho) = U(z) + (1/2) log det G(z) + (1/2) rho^T G(z)^{-1} rho from (z, rho), each (B, D), with step
    size `step_size` (scalar or (D,)), rho multiplied by momentum_scales[k] after step k:

        rho' = rho - (eps/2) dH/dz(z, rho')                        (implicit: fixed-point iterations)
        z'   = z + (eps/2) [G^{-1}(z) rho' + G^{-1}(z') rho']      (implicit: fixed-point iterations)
        rho" = rho' - (eps/2) dH/dz(z', rho')

    dU/dz comes from `potential_gradient`, the metric's terms in closed form. With G = I it is the leapfrog.
    Returns z_K, rho_K, the second output of the last `potential_gradient` call (made at z_K) and the metric
    at z_K. K + 1 gradient evaluations of U in all; the fixed points cost metric evaluations only."""
    grad, last = potential_gradient(z)
    at_z = metric.at(z)
    # dH/dz = dU/dz + d[(1/2) log det G]/dz + d[(1/2) rho^T G^{-1} rho]/dz: the first two hold in rho, and
    # each serves two half steps (the end of one step, the start of the next)
    fixed_part = grad + metric.log_det_gradient(z, at_z)
    half = 0.5 * step_size
    for scale in momentum_scales:
        rho_half = rho
        for _ in range(fixed_point_iterations):
            rho_half = rho - half * (fixed_part + metric.quadratic_gradient(z, at_z.weights, rho_half))
        velocity = _times(at_z.inverse, rho_half)
        z_next = z + step_size * velocity  # the first iteration from z' = z
        for _ in range(fixed_point_iterations - 1):
            z_next = z + half * (velocity + _times(metric.inverse(z_next), rho_half))
        z, at_z = z_next, metric.at(z_next)
        grad, last = potential_gradient(z)
        fixed_part = grad + metric.log_det_gradient(z, at_z)
        rho = (rho_half - half * (fixed_part + metric.quadratic_gradient(z, at_z.weights, rho_half))) * scale
    return z, rho, last, at_z


class RHVAE(HVAE):
    """VAE whose posterior draw is moved by K tempered generalised leapfrog steps of a Riemannian Hamiltonian
    with a learnt metric G(z), towards the true posterior (Chadebec et al., 2022): an HVAE whose momenta live
    in the geometry the model learns.

    The metric is G(z)^{-1} = sum_i L_i L_i^T exp(-|z - c_i|^2 / T^2) + lambda I, with L_i = L_psi(x_i) from
    a metric network (an MLP on the flattened input; lower triangular, exp diagonal). In training the sum
    runs over the batch, as in pythae's RHVAE: c_i = mu(x_i), the posterior means, and L_psi(x_i), both
    differentiated. Each training step also writes the batch's (mu, L L^T), detached, into a ring of
    `num_centroids` slots (buffers, saved in a checkpoint). Evaluation uses the ring, scaled to one batch's
    worth: (B / n) sum over the n written slots, B the last training batch's size, i.e. the average of the
    stored batches' training metrics. (pythae sums the whole last epoch's centroids unscaled, a metric ~N/B
    times stronger than the one trained with, with which the flow can diverge.) Under DDP each rank writes its
    own batches (DDP's default broadcast_buffers copies rank 0's buffers before each training forward, so the
    rings differ by the last step's batch at most). An untrained model's ring is empty: G^{-1} = lambda I.

    z_0 ~ q_0(z | x) = N(mu, sigma^2), rho_0 ~ N(0, G(z_0) / beta_0) (rho_0 = C^{-T} gamma / sqrt(beta_0)
    with G^{-1}(z_0) = C C^T, gamma ~ N(0, I)). Step k = 1..K is one generalised leapfrog step of

        H(z, rho) = -log p(x, z) + (1/2) log det G(z) + (1/2) rho^T G(z)^{-1} rho   (+ (D/2) log 2 pi),

    the implicit halves solved by `n_lf_fixed_point` fixed-point iterations, then rho is rescaled by the
    HVAE's tempering scheme (`tempering_schedule`). The steps preserve volume (exactly when the fixed points
    are) and the rescalings change it by (D / 2) log beta_0, so the ELBO estimate (`elbo`; `loss` = -elbo) is

        log p(x, z_K) + log N(rho_K; 0, G(z_K)) - log q_0(z_0 | x) - log N(rho_0; 0, G(z_0) / beta_0)
            + (D / 2) log beta_0,

    where log N(rho; 0, G / beta) = -(D/2) log 2 pi - (1/2) log det G + (D/2) log beta
    - (beta/2) rho^T G^{-1} rho. Written out: log p(x, z_K) - (1/2) log det G(z_K)
    - (1/2) rho_K^T G(z_K)^{-1} rho_K - (D/2) log 2 pi - log q_0(z_0 | x) + (1/2) log det G(z_0)
    - log N(gamma; 0, I). (pythae's loss leaves out the z_0 terms, and in training draws rho_0 with L_psi(x)
    for G(z_0)'s factor.) Also reported: `recon` (at z_K) and `kl`, the analytic KL of q_0, for comparison
    with the VAE.

    dU/dz comes from autograd as in the HVAE (`HVAE.potential_gradient`: a graph only in training, values in
    evaluation and under inference mode); the metric's gradients are written out (`CentroidMetric`). The flow
    runs in float32 with autocast off. A step costs K + 1 decoder passes with their gradients, one metric
    network pass, and 2 (n_lf_fixed_point + 1) metric evaluations per leapfrog step, each O(B N D^2) (N:
    centroids).

    `code(x)` is mu, `sample()` decodes prior draws, `anomaly_score` is the VAE's with q_0 (deterministic and
    exportable), as for the HVAE. `negative_log_likelihood` is the VAE's with q_0 as proposal too, not the
    HVAE's through the flow: the implicit half steps are solved by a few fixed-point iterations, so the flow
    keeps volume only approximately and its weights would not bound -log p(x).

    Args:
        n_lf: K, generalised leapfrog steps per sample.
        eps_lf: the leapfrog step size, > 0 (fixed, as in pythae).
        beta_zero: initial inverse temperature beta_0 in (0, 1] (fixed); 1 turns tempering off.
        n_lf_fixed_point: fixed-point iterations of each implicit half step.
        temperature: T, the width of the metric's kernels in latent space.
        regularization: lambda > 0, added to G^{-1}: it bounds G(z) by I / lambda.
        metric_hidden_dims: widths of the metric network's hidden layers.
        num_centroids: slots of the ring of training centroids the evaluation metric averages over (a few
            batches' worth).
        **kwargs: the arguments of `VAE`; `beta` and `kl_warmup_steps` must stay at 1 and 0.
    """

    def __init__(
        self,
        n_lf: int = 3,
        eps_lf: float = 0.001,
        beta_zero: float = 0.3,
        n_lf_fixed_point: int = 3,
        temperature: float = 1.5,
        regularization: float = 0.01,
        metric_hidden_dims: Sequence[int] = (400,),
        num_centroids: int = 1000,
        **kwargs: Any,
    ) -> None:
        hvae_only = sorted({"n_leapfrog", "learn_eps", "learn_beta_zero"} & set(kwargs))
        if hvae_only:
            raise ConfigError(
                f"RHVAE does not take {', '.join(hvae_only)}: its step count is n_lf, and its step size and "
                "beta_zero are fixed (use HVAE to learn them)"
            )
        if kwargs.get("beta", 1.0) != 1.0 or kwargs.get("kl_warmup_steps", 0) != 0:
            raise ConfigError(
                "RHVAE has no KL weight: leave beta at 1 and kl_warmup_steps at 0 (got beta "
                f"{kwargs.get('beta', 1.0)}, kl_warmup_steps {kwargs.get('kl_warmup_steps', 0)}); "
                "use VAE for a beta-VAE"
            )
        if n_lf < 1:
            raise ConfigError(f"n_lf must be at least 1 (generalised leapfrog steps of the flow), got {n_lf}")
        if n_lf_fixed_point < 1:
            raise ConfigError(
                "n_lf_fixed_point must be at least 1 (fixed-point iterations of each implicit leapfrog half "
                f"step), got {n_lf_fixed_point}"
            )
        if not temperature > 0:
            raise ConfigError(
                f"temperature must be > 0 (the width T of the metric's kernels), got {temperature}"
            )
        if not regularization > 0:
            raise ConfigError(
                "regularization must be > 0 (lambda, added to the inverse metric to keep it positive "
                f"definite), got {regularization}"
            )
        metric_hidden_dims = list(metric_hidden_dims)
        if any(width <= 0 for width in metric_hidden_dims):
            raise ConfigError(f"metric_hidden_dims must be positive widths, got {metric_hidden_dims}")
        if num_centroids < 1:
            raise ConfigError(
                "num_centroids must be at least 1 (training centroids kept for evaluation), "
                f"got {num_centroids}"
            )
        super().__init__(
            n_leapfrog=n_lf,
            eps_lf=eps_lf,
            beta_zero=beta_zero,
            learn_eps=False,
            learn_beta_zero=False,
            **kwargs,
        )
        self.n_lf_fixed_point = n_lf_fixed_point
        self.temperature = float(temperature)
        self.regularization = float(regularization)
        self.metric_network = MetricNetwork(self.image_shape, metric_hidden_dims, self.latent_dim)
        dim = self.latent_dim
        self.register_buffer("metric_centroids", torch.zeros(num_centroids, dim))
        self.register_buffer("metric_matrices", torch.zeros(num_centroids, dim, dim))
        self.register_buffer("metric_cursor", torch.zeros((), dtype=torch.long))  # the next slot to write
        self.register_buffer("metric_filled", torch.zeros((), dtype=torch.long))  # slots written
        self.register_buffer("metric_batch_size", torch.zeros((), dtype=torch.long))  # the last batch's

    def batch_metric(self, x: Tensor, mu: Tensor) -> CentroidMetric:
        """The training metric: centroids mu (B, D) of images x, with the metric network's L L^T of each."""
        lower = self.metric_network(x)  # float32
        with torch.autocast(x.device.type, enabled=False):  # L L^T in float32 under mixed precision
            matrices = lower @ lower.mT
        return CentroidMetric(mu.float(), matrices, self.temperature, self.regularization)

    def stored_metric(self) -> CentroidMetric:
        """The evaluation metric: the ring of the last training centroids, its sum scaled by B / n (B the last
        training batch's size, n the slots written), so that it is as strong as the metric trained with."""
        scale = self.metric_batch_size.float() / self.metric_filled.clamp(min=1).float()
        matrices = self.metric_matrices.float() * scale
        return CentroidMetric(self.metric_centroids.float(), matrices, self.temperature, self.regularization)

    @torch.no_grad()
    def remember(self, metric: CentroidMetric) -> None:
        """Writes a training batch's centroids and matrices into the ring, on the device (no host wait)."""
        slots, batch_size = self.metric_centroids.shape[0], len(metric.centroids)
        centroids, matrices = metric.centroids[-slots:], metric.matrices[-slots:]  # a batch over the ring
        positions = (self.metric_cursor + torch.arange(len(centroids), device=centroids.device)) % slots
        self.metric_centroids.index_copy_(0, positions, centroids.to(self.metric_centroids.dtype))
        self.metric_matrices.index_copy_(0, positions, matrices.to(self.metric_matrices.dtype))
        self.metric_cursor.add_(len(centroids)).remainder_(slots)
        self.metric_filled.add_(len(centroids)).clamp_(max=slots)
        self.metric_batch_size.fill_(batch_size)

    def log_weights(
        self, batch: Batch, num_samples: int, chunk_size: int | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The VAE's, from draws of q_0 (not the flow's: see the class's docstring)."""
        return VAE.log_weights(self, batch, num_samples, chunk_size)

    def hamiltonian_elbo(self, batch: Batch) -> dict[str, Tensor]:
        """The one-sample RHVAE ELBO of each image with its parts: `elbo`, `recon` (at z_K) and `kl` (of
        q_0), each (B,) float32."""
        create_graph = self.training and torch.is_grad_enabled()
        x = batch.inputs
        mu, logvar, _ = self.posterior(batch)
        if self.training:
            metric = self.batch_metric(x, mu)
            self.remember(metric)
        else:
            metric = self.stored_metric()
        if x.is_inference():  # under inference mode: a copy autograd may save (BCE saves its target)
            with torch.inference_mode(False):
                x = x.clone()
        # the flow and the densities in float32: a bfloat16 gradient or Cholesky factor keeps ~3 digits
        with torch.autocast(x.device.type, enabled=False):
            mu, logvar = mu.float(), logvar.float()
            z0 = reparameterize(mu, logvar)
            beta_zero = self.initial_inverse_temperature()
            at_z0 = metric.at(z0)
            rho0 = momentum_draw(torch.randn_like(z0), at_z0, beta_zero)
            betas = tempering_schedule(beta_zero, self.n_leapfrog)
            z, rho, recon, at_z = generalized_leapfrog(
                z0,
                rho0,
                self.step_size(),
                (betas[:-1] / betas[1:]).sqrt(),
                self.potential_gradient(x, create_graph),
                metric,
                self.n_lf_fixed_point,
            )
            log_target = -recon + gaussian_log_density(z).sum(1) + momentum_log_density(rho, at_z)
            log_initial = (
                gaussian_log_density(z0, mu, logvar).sum(1)
                + momentum_log_density(rho0, at_z0, beta_zero)
                - tempering_log_det(beta_zero, self.latent_dim)
            )
        return {"elbo": log_target - log_initial, "recon": recon, "kl": gaussian_kl(mu, logvar)}
