"""VAEs for disentangled codes: the beta-VAE with a controlled capacity (Burgess et al., 2018) and the
beta-TC-VAE (Chen et al., 2018)."""

import math
from typing import Any, Literal

import torch
from torch import Tensor

from ae_lightning.autoencoders.interface import ReadsDatasetSize
from ae_lightning.autoencoders.vae import VAE, gaussian_log_density
from ae_lightning.batch import Batch
from ae_lightning.errors import ConfigError

Estimator = Literal["mss", "mws"]


def refuse_kl_warmup(model: VAE, schedule: str) -> None:
    """Refuses a KL warm-up on a model whose objective schedules itself otherwise, in one line."""
    if model.kl_warmup_steps != 0:
        raise ConfigError(
            f"{type(model).__name__} has no KL warm-up ({schedule}): leave kl_warmup_steps at 0, "
            f"got {model.kl_warmup_steps}"
        )


class DisentangledBetaVAE(VAE):
    """beta-VAE with a controlled capacity: the KL is held near a target C that rises linearly during
    training, so the code takes in information a little at a time.

    loss = reconstruction + beta * |KL(q(z | x) || p(z)) - C|, C = capacity * min(1, step / capacity_steps)
    in training; evaluation uses the final C = capacity, so `val/loss` compares across epochs. Reports
    `recon`, `kl` (and `kl_dim/<i>` at evaluation, as the VAE), and `train/capacity`.

    Args:
        beta: gamma in the paper, the weight of |KL - C| (Burgess et al.: 1000).
        capacity: C_max, the final target of the KL in nats (Burgess et al.: 25).
        capacity_steps: optimizer steps over which C rises from 0 to `capacity` (0: C = capacity from the
            start).
        **kwargs: the arguments of `VAE` (`kl_warmup_steps` must stay at 0: the capacity is the schedule).
    """

    def __init__(
        self, beta: float = 1000.0, capacity: float = 25.0, capacity_steps: int = 100_000, **kwargs: Any
    ) -> None:
        super().__init__(beta=beta, **kwargs)
        refuse_kl_warmup(self, "the capacity rises instead")
        if capacity < 0:
            raise ConfigError(f"capacity must be >= 0 nats (the KL's final target), got {capacity}")
        if capacity_steps < 0:
            raise ConfigError(f"capacity_steps must be >= 0 (0: full capacity at once), got {capacity_steps}")
        self.capacity = capacity
        self.capacity_steps = capacity_steps

    def current_capacity(self) -> float:
        """C at training step `step` (in evaluation: the final capacity)."""
        if not self.training or self.capacity_steps == 0:
            return self.capacity
        return self.capacity * min(1.0, self.step / self.capacity_steps)

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        mu, logvar, z, recon = self.posterior_draw(batch)
        kl_terms = self.kl_terms(mu, logvar, z)
        loss = recon + self.beta * (kl_terms["kl"] - self.current_capacity()).abs()
        return {"loss": loss, "recon": recon, **kl_terms}

    def training_metrics(self) -> dict[str, Tensor | float]:
        return {"capacity": self.current_capacity()}


def log_importance_weights(batch_size: int, dataset_size: int, device: torch.device) -> Tensor:
    """log W (B, B) of minibatch-stratified sampling (Chen et al., appendix C): row i weighs q(z_i | x_j)
    by 1/N for its own image, (N - M) / (N M) for one other and 1/M for the rest (M = B - 1), so that each
    row sums to 1."""
    m = max(batch_size - 1, 1)
    # written with masks, not index assignment (which may wait for a GPU under deterministic algorithms)
    own = torch.eye(batch_size, device=device)
    next_one = own.roll(1, dims=1)
    stratum = (dataset_size - m) / (dataset_size * m)
    weights = 1 / m + own * (1 / dataset_size - 1 / m) + next_one * (stratum - 1 / m)
    return weights.log()


def aggregate_log_densities(
    z: Tensor, mu: Tensor, logvar: Tensor, dataset_size: int, estimator: Estimator
) -> tuple[Tensor, Tensor]:
    """Estimates of log q(z_i) and sum_d log q(z_id) of the aggregate posterior at each draw z_i, from the
    batch's posteriors (each (B, D) in): (B,) each, in float32.

    `mss` weighs the batch by `log_importance_weights`; `mws` (minibatch-weighted sampling) by 1/(N B), as
    the paper writes it, which shifts the total correlation by the constant (D - 1) log N (the gradients are
    the same)."""
    pairwise = gaussian_log_density(z.float()[:, None], mu.float()[None], logvar.float()[None])  # (B, B, D)
    if estimator == "mss":
        log_weights = log_importance_weights(z.shape[0], dataset_size, z.device)
        joint = (pairwise.sum(2) + log_weights).logsumexp(1)
        marginals = (pairwise + log_weights[:, :, None]).logsumexp(1).sum(1)
        return joint, marginals
    offset = math.log(dataset_size * z.shape[0])
    return pairwise.sum(2).logsumexp(1) - offset, (pairwise.logsumexp(1) - offset).sum(1)


class BetaTCVAE(VAE, ReadsDatasetSize):
    """beta-TC-VAE: the KL split into the index-code mutual information, the total correlation of the
    aggregate posterior q(z) and the dimension-wise KL, each weighted, with q(z) estimated from the batch.

    loss = reconstruction + alpha * [log q(z|x) - log q(z)] + beta * [log q(z) - sum_d log q(z_d)]
    + gamma * [sum_d log q(z_d) - log p(z)], at one posterior draw z per image. Reports `recon`,
    `mutual_info`, `total_correlation`, `dimension_kl` and `kl` (analytic, for comparison).

    Args:
        alpha: weight of the mutual information.
        beta: weight of the total correlation (Chen et al.: 6 on dSprites).
        gamma: weight of the dimension-wise KL.
        estimator: `mss` (minibatch-stratified sampling) or `mws` (minibatch-weighted sampling).
        dataset_size: N, the number of training images both estimators weigh by (None: taken from the data
            at fit).
        **kwargs: the arguments of `VAE` (`kl_warmup_steps` must stay at 0).
    """

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 6.0,
        gamma: float = 1.0,
        estimator: Estimator = "mss",
        dataset_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(beta=beta, **kwargs)
        refuse_kl_warmup(self, "the three weights are fixed")
        if min(alpha, gamma) < 0:
            raise ConfigError(f"alpha and gamma must be >= 0, got {alpha} and {gamma}")
        if estimator not in ("mss", "mws"):
            raise ConfigError(
                "estimator must be 'mss' (minibatch-stratified) or 'mws' (minibatch-weighted), "
                f"got {estimator!r}"
            )
        if dataset_size is not None and dataset_size < 1:
            raise ConfigError(f"dataset_size must be the number of training images, got {dataset_size}")
        self.alpha = alpha
        self.gamma = gamma
        self.estimator: Estimator = estimator
        self.dataset_size = dataset_size

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        mu, logvar, z, recon = self.posterior_draw(batch)
        log_posterior = gaussian_log_density(z.float(), mu.float(), logvar.float()).sum(1)
        log_joint, log_marginals = aggregate_log_densities(
            z, mu, logvar, self.known_dataset_size(), self.estimator
        )
        mutual_info = log_posterior - log_joint
        total_correlation = log_joint - log_marginals
        dimension_kl = log_marginals - self.log_prior(z)
        loss = recon + self.alpha * mutual_info + self.beta * total_correlation + self.gamma * dimension_kl
        return {
            "loss": loss,
            "recon": recon,
            "mutual_info": mutual_info,
            "total_correlation": total_correlation,
            "dimension_kl": dimension_kl,
            **self.kl_terms(mu, logvar, z),
        }
