"""The learnt Riemannian metric of the RHVAE (Chadebec, Mantoux & Allassonnière, 2022): a smooth mixture of
matrices L_i L_i^T around centroids c_i in latent space, and the network that gives each image its L.

    G(z)^{-1} = sum_i L_i L_i^T exp(-|z - c_i|^2 / T^2) + lambda I

Its log-determinant and the gradients the Riemannian leapfrog needs are written out (below) rather than
taken by autograd: they cost a few matrix products, and need no autograd graph in evaluation.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ae_lightning.autoencoders.vae import LOG_2PI
from ae_lightning.nets import MLPEncoder


class MetricNetwork(nn.Module):
    """x -> L_psi(x), lower triangular with a positive (exp) diagonal: an MLP on the flattened input whose
    output holds the D log-diagonal entries and the D (D - 1) / 2 strictly lower ones."""

    def __init__(self, image_shape: Sequence[int], hidden_dims: Sequence[int], latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.net = MLPEncoder(image_shape, hidden_dims, latent_dim + latent_dim * (latent_dim - 1) // 2)
        rows, cols = torch.tril_indices(latent_dim, latent_dim, offset=-1)
        # where the strictly lower entries go in a flattened (D * D) matrix; moved with the model, not saved
        self.register_buffer("lower_positions", rows * latent_dim + cols, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, *input_shape) -> L (B, D, D), float32 whatever the precision."""
        out = self.net(x).float()
        log_diagonal, lower = out[:, : self.latent_dim], out[:, self.latent_dim :]
        flat = lower.new_zeros(len(out), self.latent_dim**2).index_copy(1, self.lower_positions, lower)
        return flat.view(-1, self.latent_dim, self.latent_dim) + torch.diag_embed(log_diagonal.exp())


class MetricAt(NamedTuple):
    """The metric evaluated at codes z (B, D): the kernel weights (B, N), G^{-1}(z) (B, D, D) and its
    lower Cholesky factor C (G^{-1} = C C^T), (B, D, D)."""

    weights: Tensor
    inverse: Tensor
    cholesky: Tensor


@dataclass(frozen=True)
class CentroidMetric:
    """G(z)^{-1} = sum_i M_i exp(-|z - c_i|^2 / T^2) + lambda I for centroids c_i (N, D) and symmetric
    positive semi-definite M_i = L_i L_i^T (N, D, D): symmetric positive definite for lambda > 0."""

    centroids: Tensor
    matrices: Tensor
    temperature: float
    regularization: float

    def weights(self, z: Tensor) -> Tensor:
        """exp(-|z - c_i|^2 / T^2) of each code and centroid: (B, D) -> (B, N)."""
        # |z|^2 + |c|^2 - 2 z.c: a matrix product, not a (B, N, D) tensor of differences
        squared = z.square().sum(1, keepdim=True) + self.centroids.square().sum(1) - 2 * z @ self.centroids.T
        return torch.exp(-squared.clamp(min=0) / self.temperature**2)

    def inverse(self, z: Tensor, weights: Tensor | None = None) -> Tensor:
        """G(z)^{-1}: (B, D) -> (B, D, D)."""
        weights = self.weights(z) if weights is None else weights
        dim = z.shape[-1]
        mixture = (weights @ self.matrices.flatten(1)).view(-1, dim, dim)
        return mixture + self.regularization * torch.eye(dim, dtype=z.dtype, device=z.device)

    def at(self, z: Tensor) -> MetricAt:
        """Weights, G^{-1} and its Cholesky factor at z (B, D). `cholesky_ex`: no check that makes the host
        wait (G^{-1} is positive definite by construction)."""
        weights = self.weights(z)
        inverse = self.inverse(z, weights)
        return MetricAt(weights, inverse, torch.linalg.cholesky_ex(inverse).L)

    def _pull(self, z: Tensor, coefficients: Tensor) -> Tensor:
        """sum_i a_i (z - c_i) for coefficients a (B, N): (B, D)."""
        return coefficients.sum(1, keepdim=True) * z - coefficients @ self.centroids

    def log_det_gradient(self, z: Tensor, metric: MetricAt) -> Tensor:
        """d/dz of (1/2) log det G(z) = -(1/2) log det G^{-1}(z), which is
        sum_i w_i tr(G M_i) (z - c_i) / T^2: (B, D)."""
        metric_matrix = torch.cholesky_inverse(metric.cholesky)  # G(z), (B, D, D)
        # tr(G M_i) = sum_jk G_jk M_i,jk, M_i symmetric
        traces = metric_matrix.flatten(1) @ self.matrices.flatten(1).T  # (B, N)
        return self._pull(z, metric.weights * traces / self.temperature**2)

    def quadratic_gradient(self, z: Tensor, weights: Tensor, rho: Tensor) -> Tensor:
        """d/dz of (1/2) rho^T G^{-1}(z) rho: -sum_i w_i (rho^T M_i rho) (z - c_i) / T^2, (B, D)."""
        quadratic = (rho[:, :, None] * rho[:, None, :]).flatten(1) @ self.matrices.flatten(1).T  # (B, N)
        return self._pull(z, -weights * quadratic / self.temperature**2)


def log_det_inverse(metric: MetricAt) -> Tensor:
    """log det G^{-1}(z) = -log det G(z) from the Cholesky factor: (B,)."""
    return 2 * metric.cholesky.diagonal(dim1=-2, dim2=-1).log().sum(-1)


def momentum_log_density(rho: Tensor, metric: MetricAt, inverse_temperature: Tensor | float = 1.0) -> Tensor:
    """log N(rho; 0, G(z) / beta) of momenta rho (B, D) at the metric of z:
    -(D/2) log 2 pi - (1/2) log det G + (D/2) log beta - (beta/2) rho^T G^{-1} rho, (B,)."""
    beta = inverse_temperature
    log_beta = beta.log() if isinstance(beta, Tensor) else math.log(beta)  # no tensor of a host number
    quadratic = (rho[:, None, :] @ metric.inverse @ rho[:, :, None])[:, 0, 0]
    return 0.5 * (rho.shape[-1] * (log_beta - LOG_2PI) + log_det_inverse(metric) - beta * quadratic)


def momentum_draw(gamma: Tensor, metric: MetricAt, inverse_temperature: Tensor) -> Tensor:
    """rho = C^{-T} gamma / sqrt(beta) for standard normal gamma (B, D): a draw of N(0, G(z) / beta), since
    G = (C C^T)^{-1} = C^{-T} C^{-1}. (B, D)."""
    rho = torch.linalg.solve_triangular(metric.cholesky.mT, gamma[:, :, None], upper=True)[:, :, 0]
    return rho * inverse_temperature.rsqrt()
