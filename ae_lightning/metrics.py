"""Statistics gathered over a whole epoch (and across devices): active latent units, codebook usage."""

import torch
from torch import Tensor
from torchmetrics import Metric

from ae_lightning.nets.one_hot import one_hot

#: a latent unit is active when its posterior mean varies across the data by more than this (Burda et al.)
ACTIVE_UNIT_THRESHOLD = 0.01


class ActiveUnits(Metric):
    """Number of latent units whose posterior mean varies across the data: Var_x(E_q(z|x)[z_u]) > threshold.

    `update` takes the posterior means (B, latent_dim) of a batch; the sums it keeps are added across
    devices before `compute`, so the count is that of the whole data set.
    """

    full_state_update = False

    def __init__(self, latent_dim: int, threshold: float = ACTIVE_UNIT_THRESHOLD) -> None:
        super().__init__()
        self.threshold = threshold
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(latent_dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total_sq", torch.zeros(latent_dim, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, means: Tensor) -> None:
        means = means.detach().double()
        self.count += means.shape[0]
        self.total += means.sum(0)
        self.total_sq += means.square().sum(0)

    def variances(self) -> Tensor:
        """Variance of each unit's posterior mean over the data seen, (latent_dim,)."""
        mean = self.total / self.count
        return (self.total_sq / self.count - mean.square()).clamp(min=0)

    def compute(self) -> Tensor:
        return (self.variances() > self.threshold).sum().float()


def usage_statistics(counts: Tensor) -> dict[str, Tensor]:
    """Perplexity exp(H(p)) of the code distribution p = counts / sum, and the fraction of codes used."""
    probs = counts.double() / counts.sum().clamp(min=1)
    entropy = -(probs * probs.clamp(min=1e-12).log()).sum()
    return {"perplexity": entropy.exp().float(), "codes_used": (counts > 0).double().mean().float()}


class CodeUsage(Metric):
    """How often each codebook entry is chosen; `compute` gives perplexity and the fraction of codes used."""

    full_state_update = False

    def __init__(self, codebook_size: int) -> None:
        super().__init__()
        self.add_state("counts", torch.zeros(codebook_size, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, indices: Tensor) -> None:
        """`indices`: chosen codes, any shape."""
        # not bincount, which learns the largest index on the host (a wait for a GPU at every batch)
        self.counts += one_hot(indices.flatten(), self.counts.numel(), torch.float64).sum(0)

    def compute(self) -> dict[str, Tensor]:
        return usage_statistics(self.counts)
