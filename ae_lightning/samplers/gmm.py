"""A Gaussian mixture fitted to the codes by expectation-maximisation: what makes a deterministic
autoencoder (an AE, an RAE) generate, and a VAE generate from where its codes are rather than from its prior
(Ghosh et al., ICLR 2020, "From variational to deterministic autoencoders", section 5; pythae's
GaussianMixtureSampler)."""

import math
from typing import Any

import torch
from torch import Tensor

from ae_lightning.autoencoders import Autoencoder
from ae_lightning.errors import ConfigError
from ae_lightning.samplers.base import Progress, Sampler


def _log_densities(codes: Tensor, means: Tensor, cholesky: Tensor) -> Tensor:
    """log N(code; mean_k, L_k L_k^T) of each code under each component: (N, D), (K, D), (K, D, D) ->
    (N, K)."""
    centred = codes[:, None, :] - means[None]  # (N, K, D)
    # L^-1 (x - mu) by a triangular solve per component
    solved = torch.linalg.solve_triangular(cholesky[None], centred[..., None], upper=False)[..., 0]
    log_det = cholesky.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # log |L| = half the log-determinant
    dim = codes.shape[1]
    return -0.5 * solved.square().sum(-1) - log_det - 0.5 * dim * math.log(2 * math.pi)


class GaussianMixtureSampler(Sampler):
    """A mixture of `num_components` full-covariance Gaussians fitted to the training codes by EM: k-means++
    seeds the means (seeded: the same codes give the same mixture), then `max_iterations` EM steps or until
    the mean log-likelihood gains less than `tolerance`; `reg_covar` is added to every covariance's diagonal
    (as scikit-learn's GaussianMixture, whose defaults these are: 100 iterations, tolerance 1e-3, 1e-6).
    Computed in float64 on the codes' device.

    Args:
        latent_dim: size of the codes.
        num_components: K, the Gaussians (pythae's default, 10).
        max_iterations: EM steps at most.
        tolerance: stop when the mean log-likelihood per code gains less.
        reg_covar: added to each covariance's diagonal, keeps it positive definite.
        seed: seeds the k-means++ choice of the first means.
    """

    name = "gmm"
    fitted = True

    def __init__(
        self,
        latent_dim: int,
        num_components: int = 10,
        max_iterations: int = 100,
        tolerance: float = 1e-3,
        reg_covar: float = 1e-6,
        seed: int = 0,
    ) -> None:
        super().__init__(latent_dim)
        if num_components < 1 or max_iterations < 1 or tolerance < 0 or reg_covar < 0:
            raise ConfigError(
                "gmm needs num_components >= 1, max_iterations >= 1, tolerance >= 0 and reg_covar >= 0, got "
                f"{num_components}, {max_iterations}, {tolerance}, {reg_covar}"
            )
        self.num_components, self.max_iterations = num_components, max_iterations
        self.tolerance, self.reg_covar, self.seed = tolerance, reg_covar, seed
        uniform = torch.full((num_components,), 1.0 / num_components, dtype=torch.float64)
        self.register_buffer("weights", uniform)
        self.register_buffer("means", torch.zeros(num_components, latent_dim, dtype=torch.float64))
        eye = torch.eye(latent_dim, dtype=torch.float64)
        self.register_buffer("cholesky", eye.repeat(num_components, 1, 1))
        #: the mean log-likelihood per code at the end of the fit, and the EM steps it took
        self.log_likelihood: float | None = None
        self.iterations = 0

    def options(self) -> dict[str, Any]:
        return {
            "num_components": self.num_components,
            "max_iterations": self.max_iterations,
            "tolerance": self.tolerance,
            "reg_covar": self.reg_covar,
            "seed": self.seed,
        }

    def log_density(self, codes: Tensor) -> Tensor:
        """log p(code) under the mixture, (N, D) -> (N,), float64."""
        joint = _log_densities(codes.double(), self.means, self.cholesky) + self.weights.log()
        return joint.logsumexp(1)

    def fit(self, codes: Tensor, progress: Progress | None = None) -> None:
        codes = codes.detach().double().flatten(1)
        count = codes.shape[0]
        if count < self.num_components:
            raise ConfigError(
                f"gmm: {count} codes cannot fit {self.num_components} components: lower num_components"
            )
        self.means = self._seed_means(codes)
        self.weights = torch.full_like(self.weights, 1.0 / self.num_components).to(codes.device)
        spread = torch.cov(codes.T).reshape(self.latent_dim, self.latent_dim)
        self.cholesky = self._cholesky(spread.expand(self.num_components, -1, -1))
        previous = -math.inf
        for iteration in range(1, self.max_iterations + 1):
            # E step: the responsibility of each component for each code
            joint = _log_densities(codes, self.means, self.cholesky) + self.weights.log()
            log_likelihood = joint.logsumexp(1, keepdim=True)
            responsibilities = (joint - log_likelihood).exp()  # (N, K)
            # M step: weights, means and covariances from the responsibilities
            totals = responsibilities.sum(0) + 10 * torch.finfo(torch.float64).eps  # (K,)
            self.weights = totals / count
            self.means = (responsibilities.T @ codes) / totals[:, None]
            centred = codes[:, None, :] - self.means[None]  # (N, K, D)
            weighted = responsibilities[..., None] * centred
            covariances = torch.einsum("nkd,nke->kde", weighted, centred) / totals[:, None, None]
            self.cholesky = self._cholesky(covariances)
            mean_log_likelihood = float(log_likelihood.mean())
            self.iterations = iteration
            if progress is not None:
                progress(iteration, self.max_iterations)
            if abs(mean_log_likelihood - previous) < self.tolerance:
                break
            previous = mean_log_likelihood
        self.log_likelihood = float(self.log_density(codes).mean())

    def _seed_means(self, codes: Tensor) -> Tensor:
        """k-means++ (Arthur & Vassilvitskii, 2007): each next mean a code drawn with probability
        proportional to its squared distance from the nearest mean chosen so far."""
        generator = torch.Generator().manual_seed(self.seed)
        first = int(torch.randint(codes.shape[0], (1,), generator=generator))
        chosen = [codes[first]]
        nearest = (codes - chosen[0]).square().sum(1)
        for _ in range(1, self.num_components):
            index = int(torch.multinomial(nearest.cpu() + 1e-300, 1, generator=generator))
            chosen.append(codes[index])
            nearest = torch.minimum(nearest, (codes - codes[index]).square().sum(1))
        return torch.stack(chosen)

    def _cholesky(self, covariances: Tensor) -> Tensor:
        eye = torch.eye(self.latent_dim, dtype=covariances.dtype, device=covariances.device)
        return torch.linalg.cholesky(covariances + self.reg_covar * eye)

    def noise_size(self) -> int:
        return self.latent_dim + 1

    def codes_from_noise(self, model: Autoencoder, noise: Tensor) -> Tensor:
        """The first number picks the component (its normal CDF, a uniform number, against the cumulative
        weights), the others are the component's standardised draw."""
        # in float32 (ONNX Runtime has no float64 erf); the rest in the mixture's float64
        uniform = 0.5 * (1 + torch.erf(noise[:, :1].float() / math.sqrt(2)))
        bounds = self.weights.cumsum(0)[:-1].float()
        component = (uniform > bounds).sum(1)  # (B,): how many cumulative weights the number passed
        draw = (self.cholesky[component] @ noise[:, 1:, None].to(self.means.dtype))[..., 0]
        return (self.means[component] + draw).float()

    def exported_parameters(self) -> dict[str, Any]:
        return {
            "weights": self.weights.tolist(),
            "means": self.means.tolist(),
            "cholesky": self.cholesky.tolist(),
            "how": "k: the component whose cumulative weight first exceeds a uniform number; "
            "latent = means[k] + cholesky[k] @ n, n ~ N(0, I)",
        }
