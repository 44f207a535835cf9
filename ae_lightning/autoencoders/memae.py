"""The memory-augmented autoencoder, MemAE (Gong et al., "Memorizing Normality to Detect Anomaly:
Memory-augmented Deep Autoencoder for Unsupervised Anomaly Detection", ICCV 2019)."""

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ae_lightning.autoencoders.base import Autoencoder
from ae_lightning.batch import Batch
from ae_lightning.errors import ConfigError

#: the small positive number of eq. 7, and the floor of the norms and sums divided by (as the authors' code)
EPS = 1e-12


def hard_shrink(weights: Tensor, threshold: float, eps: float = EPS) -> Tensor:
    """Eq. 7: max(w - lambda, 0) * w / (|w - lambda| + eps), elementwise; for w >= 0 this is w where
    w > lambda and 0 elsewhere, written so that it has a gradient."""
    return F.relu(weights - threshold) * weights / ((weights - threshold).abs() + eps)


def address_entropy(weights: Tensor) -> Tensor:
    """Entropy of each row of addressing weights, sum_i -w_i log w_i with 0 log 0 = 0: (B, N) -> (B,)."""
    weights = weights.float()
    # log of the clamped weight: a pruned weight (exactly 0) adds 0 and a finite gradient, where log(0) or a
    # torch.where around it would give a NaN gradient
    return -(weights * weights.clamp_min(EPS).log()).sum(1)


def max_weight(memory_size: int) -> float:
    """The largest softmax weight of cosine similarities to `memory_size` items (one at +1, the rest -1)."""
    return math.exp(2) / (math.exp(2) + memory_size - 1)


class MemoryModule(nn.Module):
    """A memory of `memory_size` trainable items in R^item_dim that a code is rebuilt from.

    A code z reads w = softmax_i(cos(z, m_i)), shrinks it (eq. 7: weights at or below `shrink_threshold`
    become 0), re-normalises the rest to sum to 1 and returns z_hat = w_hat @ M (the paper's section 3.3).
    A threshold of 0 reads with the plain softmax weights.

    Args:
        memory_size: N, the number of items.
        item_dim: D, the size of each item (the code's).
        shrink_threshold: lambda of eq. 7, in [0, 1).
    """

    def __init__(self, memory_size: int, item_dim: int, shrink_threshold: float = 0.01) -> None:
        super().__init__()
        self.memory_size = memory_size
        self.item_dim = item_dim
        self.shrink_threshold = shrink_threshold
        # N(0, 1), not the authors' U(-1/sqrt(D), 1/sqrt(D)): the cosine ignores an item's length, which only
        # sets the size of the reads; a read averages tens of items, so items that short give reads that
        # barely differ between images, and the decoder starts out drawing the mean image
        self.items = nn.Parameter(torch.randn(memory_size, item_dim))  # (N, D)

    def similarity(self, z: Tensor) -> Tensor:
        """Cosine similarity of each code with each item (the paper's; the authors' code takes the dot
        product): (B, D) -> (B, N)."""
        return F.normalize(z, dim=1, eps=EPS) @ F.normalize(self.items, dim=1, eps=EPS).T

    def address(self, z: Tensor) -> Tensor:
        """The shrunk, re-normalised addressing weights of codes (B, D): (B, N) float32, rows summing to 1
        (or all 0, when no weight of a row exceeds the threshold)."""
        # float32: under bfloat16 autocast the matmul runs in bfloat16, but eq. 7 compares weights near
        # lambda and divides by their difference
        weights = torch.softmax(self.similarity(z).float(), dim=1)
        if self.shrink_threshold == 0:
            return weights
        shrunk = hard_shrink(weights, self.shrink_threshold)
        return shrunk / shrunk.sum(1, keepdim=True).clamp_min(EPS)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Codes (B, D) -> (z_hat (B, D) in the dtype of z, addressing weights w_hat (B, N) float32)."""
        weights = self.address(z)
        return (weights @ self.items.float()).to(z.dtype), weights

    def extra_repr(self) -> str:
        return f"{self.memory_size} items of {self.item_dim}, shrink_threshold={self.shrink_threshold}"


class MemAE(Autoencoder):
    """Autoencoder whose code is rebuilt from a memory of normal patterns before it is decoded.

    The encoder's code z addresses the memory (`MemoryModule`) and the decoder sees z_hat, a convex
    combination of the items whose weights pass the shrinkage, in training and evaluation alike: `code`,
    `forward`, `reconstruct`, `latent`, `reconstruction_error` and `anomaly_score` all go through the
    memory, so an anomaly is rebuilt from normal items and reconstructed poorly. The loss (section 3.4) is
    `recon` + `entropy_weight` * `entropy`, the entropy of the shrunk weights, which pushes each code to
    read fewer items; `memory_items` reports how many items each code reads. The anomaly score is the
    reconstruction error through the memory (deterministic).

    Args:
        memory_size: N, the number of memory items (the paper: 100 for MNIST, 500 for CIFAR-10).
        shrink_threshold: lambda of the hard shrinkage, in [0, 1); 0 turns it off. The paper sets it in
            [1/N, 3/N]; the default, 0.01, is 1/N for the default memory (the authors' code: 0.0025 with
            N = 2000). A code's largest weight is at least 1/N, so up to 1/N every code reads an item; above
            it, watch `memory_items`: a code whose weights are all at or below lambda reads 0, and nothing
            before the memory learns from it.
        entropy_weight: alpha, the weight of the entropy term (the paper: 0.0002, with the per-pixel mean
            squared error as its reconstruction term; `recon` here is summed over pixels, so the paper's
            balance is 0.0002 x the number of pixels, e.g. 0.16 for 28x28 images).
        **kwargs: the arguments of `Autoencoder`.
    """

    def __init__(
        self,
        memory_size: int = 100,
        shrink_threshold: float = 0.01,
        entropy_weight: float = 0.0002,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if memory_size < 1:
            raise ConfigError(f"memory_size must be a positive number of memory items, got {memory_size}")
        if not 0 <= shrink_threshold < 1:
            raise ConfigError(
                f"shrink_threshold must be an addressing weight in [0, 1) (the paper: 1/memory_size to "
                f"3/memory_size; 0 turns the shrinkage off), got {shrink_threshold}"
            )
        if entropy_weight < 0:
            raise ConfigError(
                f"entropy_weight must be >= 0 (0 turns the entropy term off), got {entropy_weight}"
            )
        if shrink_threshold >= max_weight(memory_size):
            raise ConfigError(
                f"shrink_threshold {shrink_threshold} is at least the largest addressing weight a memory of "
                f"{memory_size} items can give ({max_weight(memory_size):.4g}), so every code would read 0: "
                f"use about 1/memory_size = {1 / memory_size:.4g}"
            )
        self.memory_size = memory_size
        self.shrink_threshold = shrink_threshold
        self.entropy_weight = entropy_weight
        self.memory = MemoryModule(memory_size, self.latent_dim, shrink_threshold)

    def read(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Images (B, C, H, W) -> (z_hat (B, latent_dim), the memory read of their codes; weights (B, N))."""
        return self.memory(self.encoder(x))

    def code(self, x: Tensor) -> Tensor:
        """The code the decoder takes: the memory read z_hat of the encoder's code, (B, latent_dim)."""
        return self.read(x)[0]

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        z_hat, weights = self.read(batch.inputs)
        recon = self.reconstruction_loss(self.decoder(z_hat), batch.inputs)
        entropy = address_entropy(weights)
        return {
            "loss": recon + self.entropy_weight * entropy,
            "recon": recon,
            "entropy": entropy,
            "memory_items": (weights > 0).sum(1).float(),
        }
