"""The maximum mean discrepancy between the codes of a batch and draws of the prior (Gretton et al., 2012),
with the kernels of the Wasserstein autoencoder (Tolstikhin et al., 2018): what WAE and InfoVAE penalise."""

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from ae_lightning.errors import ConfigError

Kernel = Literal["imq", "rbf"]

#: the multiples of the base scale summed by the inverse multiquadratic kernel (Tolstikhin et al.'s code): no
#: single scale suits codes both near and far from the prior
IMQ_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def check_kernel(kernel: str, bandwidth: float) -> None:
    """Refuses an unknown kernel or a bandwidth that is not positive, in one line."""
    if kernel not in ("imq", "rbf"):
        message = f"kernel must be 'imq' (inverse multiquadratic) or 'rbf' (Gaussian), got {kernel!r}"
        raise ConfigError(message)
    if not bandwidth > 0:
        raise ConfigError(f"kernel_bandwidth must be > 0 (the prior's standard deviation), got {bandwidth}")


def kernel_matrix(
    a: Tensor, b: Tensor, kernel: Kernel, bandwidth: float = 1.0, scales: Sequence[float] = IMQ_SCALES
) -> Tensor:
    """k(a_i, b_j) for codes a (N, D) and b (M, D) -> (N, M), in float32, with the base scale
    C = 2 D bandwidth^2 (the expected squared distance of two draws of N(0, bandwidth^2 I)):
    `imq` sums C s / (C s + |a - b|^2) over the scales s; `rbf` is exp(-|a - b|^2 / C)."""
    a, b = a.float(), b.float()
    # |a|^2 + |b|^2 - 2 a.b, not cdist: a square root has no gradient at a set's zero distances to itself
    squared_distances = (a.square().sum(1, keepdim=True) + b.square().sum(1) - 2 * a @ b.T).clamp(min=0)
    base = 2.0 * a.shape[1] * bandwidth**2
    if kernel == "rbf":
        return torch.exp(-squared_distances / base)
    return sum(base * s / (base * s + squared_distances) for s in scales)


def mmd(codes: Tensor, prior_draws: Tensor, kernel: Kernel, bandwidth: float = 1.0) -> Tensor:
    """The unbiased estimate of MMD^2 between codes (N, D) and prior draws (N, D): the mean kernel value of
    distinct pairs within each set, minus twice the mean over all pairs across them; a float32 scalar.

    A batch of one has no distinct pairs: its within-set means are taken as 0."""
    n = codes.shape[0]
    pairs = max(n * (n - 1), 1)
    within_codes = kernel_matrix(codes, codes, kernel, bandwidth)
    within_prior = kernel_matrix(prior_draws, prior_draws, kernel, bandwidth)
    across = kernel_matrix(codes, prior_draws, kernel, bandwidth)
    within = sum(matrix.sum() - matrix.diagonal().sum() for matrix in (within_codes, within_prior))
    return within / pairs - 2 * across.mean()


def prior_mmd(z: Tensor, kernel: Kernel, bandwidth: float = 1.0) -> Tensor:
    """MMD^2 between codes (B, D) and B fresh draws of N(0, I), as a batch statistic: (B,), each image the
    same value."""
    draws = torch.randn(z.shape, dtype=torch.float32, device=z.device)
    return mmd(z, draws, kernel, bandwidth).expand(z.shape[0])
