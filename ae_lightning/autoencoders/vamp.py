"""The VAE with a VampPrior (Tomczak & Welling, "VAE with a VampPrior", AISTATS 2018)."""

import math
from typing import Any

import torch
from torch import Tensor, nn

from ae_lightning.autoencoders.vae import VAE, gaussian_log_density
from ae_lightning.errors import ConfigError
from ae_lightning.nets.sampling import standard_normal


def mixture_log_density(z: Tensor, means: Tensor, logvars: Tensor) -> Tensor:
    """log of the equal-weight mixture of diagonal Gaussians N(means_k, exp(logvars_k)) at codes z (..., D):
    (...), in float32. Written as matrix products, so memory grows with codes x components, not with D."""
    z, means, logvars = z.float(), means.float(), logvars.float()
    precisions = (-logvars).exp()  # (K, D)
    flat = z.reshape(-1, z.shape[-1])
    squared = flat.square() @ precisions.T - 2 * flat @ (means * precisions).T  # (N, K)
    constant = (means.square() * precisions + logvars).sum(1) + z.shape[-1] * math.log(2 * math.pi)  # (K,)
    log_components = -0.5 * (squared + constant)
    log_mixture = log_components.logsumexp(1) - math.log(means.shape[0])
    return log_mixture.reshape(z.shape[:-1])


class VampVAE(VAE):
    """VAE whose prior is the variational mixture of posteriors: p(z) = (1/K) sum_k q(z | u_k), the encoder's
    posteriors at K learnt pseudo-inputs u_k, images kept within the data's range.

    loss = reconstruction + beta * [log q(z | x) - log p(z)] at one posterior draw (the KL has no closed form
    under a mixture prior). Samples: a pseudo-input chosen at random, a draw of its posterior, decoded. The
    test NLL is the importance-sampled estimate under this prior. Reports `recon` and `kl` (the one-draw
    estimate); no per-unit KL (the prior does not factorise over units).

    Args:
        num_components: K, the pseudo-inputs (Tomczak & Welling: 500 on MNIST; pythae's default 50). Each
            training step encodes them all.
        **kwargs: the arguments of `VAE`.
    """

    def __init__(self, num_components: int = 500, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_components < 1:
            raise ConfigError(
                f"num_components must be at least 1 (K, the pseudo-inputs), got {num_components}"
            )
        self.num_components = num_components
        low, high = self.value_range
        # as the paper, near the middle of the data's range with a little spread
        middle = torch.full((num_components, *self.image_shape), (low + high) / 2)
        self.pseudo_inputs = nn.Parameter(middle + 0.01 * (high - low) * torch.randn_like(middle))

    def prior_components(self) -> tuple[Tensor, Tensor]:
        """(means, logvars) of the K posteriors of the pseudo-inputs, each (K, D)."""
        low, high = self.value_range
        return self.encode(self.pseudo_inputs.clamp(low, high))

    def log_prior(self, z: Tensor) -> Tensor:
        return mixture_log_density(z, *self.prior_components())

    def kl_divergence(self, mu: Tensor, logvar: Tensor, z: Tensor) -> Tensor:
        """log q(z | x) - log p(z) at the draws z (..., B, D): a one-draw estimate of the KL, (..., B)."""
        log_posterior = gaussian_log_density(z.float(), mu.float(), logvar.float()).sum(-1)
        return log_posterior - self.log_prior(z)

    def kl_terms(self, mu: Tensor, logvar: Tensor, z: Tensor) -> dict[str, Tensor]:
        return {"kl": self.kl_divergence(mu, logvar, z)}

    def prior_noise(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """Draws of the VampPrior: a component chosen uniformly, then a draw of its Gaussian."""
        means, logvars = self.prior_components()
        if generator is None:  # drawn on the device: no copy from the host
            components = torch.randint(self.num_components, (num_samples,), device=means.device)
        else:
            components = torch.randint(self.num_components, (num_samples,), generator=generator).to(
                means.device
            )
        eps = standard_normal((num_samples, self.latent_dim), generator, means.device, means.dtype)
        return means[components] + (0.5 * logvars[components]).exp() * eps
