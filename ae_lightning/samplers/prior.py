"""Samplers that fit nothing: they draw from a distribution the model defines or that is fixed."""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ae_lightning.autoencoders import Autoencoder, PoincareVAE, VampVAE
from ae_lightning.samplers.base import Sampler, where_codes_live


class NormalSampler(Sampler):
    """N(0, I) codes: a VAE's prior (pythae's NormalSampler); for a model trained without a prior (an AE, an
    RAE) it is the baseline a fitted sampler improves on."""

    name = "normal"

    def noise_size(self) -> int:
        return self.latent_dim

    def codes_from_noise(self, model: Autoencoder, noise: Tensor) -> Tensor:
        return noise


class VampSampler(Sampler):
    """The VampPrior of a `VampVAE`: a component (a learnt pseudo-input's posterior) chosen uniformly, then a
    draw of its Gaussian (pythae's VAMPSampler)."""

    name = "vamp"

    @classmethod
    def refusal(cls, model: Autoencoder) -> str | None:
        if not isinstance(model, VampVAE):
            return f"the vamp sampler draws from a VampVAE's learnt prior; {type(model).__name__} has none"
        return None

    def noise_size(self) -> int:
        return self.latent_dim + 1

    def codes_from_noise(self, model: Autoencoder, noise: Tensor) -> Tensor:
        """The first number picks the component (its normal CDF against equal cumulative weights), the
        others are the draw of that component's Gaussian."""
        assert isinstance(model, VampVAE)
        means, logvars = model.prior_components()
        count = means.shape[0]
        uniform = 0.5 * (1 + torch.erf(noise[:, :1].float() / math.sqrt(2)))
        bounds = torch.arange(1, count, device=noise.device, dtype=torch.float32) / count
        component = (uniform > bounds).sum(1)
        return means[component] + (0.5 * logvars[component]).exp() * noise[:, 1:].to(means.dtype)


class HypersphereSampler(Sampler):
    """The uniform distribution on the unit sphere S^{D-1}, the prior of a model whose codes live there
    (`SVAE`): normalised N(0, I) draws (pythae's HypersphereUniformSampler)."""

    name = "hypersphere"

    @classmethod
    def refusal(cls, model: Autoencoder) -> str | None:
        if model.latent_space != "sphere":
            return (
                f"the hypersphere sampler draws codes on the unit sphere, but {type(model).__name__}'s are "
                f"{where_codes_live(model)}"
            )
        return None

    def noise_size(self) -> int:
        return self.latent_dim

    def codes_from_noise(self, model: Autoencoder, noise: Tensor) -> Tensor:
        return F.normalize(noise, dim=1)


class PoincareSampler(Sampler):
    """The prior of a `PoincareVAE` on its Poincaré ball (wrapped or Riemannian normal at the origin, as it
    was trained with; pythae's PoincareDiskSampler)."""

    name = "poincare"

    @classmethod
    def refusal(cls, model: Autoencoder) -> str | None:
        if not isinstance(model, PoincareVAE):
            return (
                "the poincare sampler draws from a PoincareVAE's prior on the Poincaré ball; "
                f"{type(model).__name__}'s codes are {where_codes_live(model)}"
            )
        return None

    def sample_codes(
        self, model: Autoencoder, num_samples: int, generator: torch.Generator | None = None
    ) -> Tensor:
        assert isinstance(model, PoincareVAE)
        return model.prior_sample(num_samples, generator)
