"""The variational autoencoder (Kingma & Welling, 2014), with a beta weight on the KL term."""

from typing import Any

import torch
from torch import Tensor

from ae_lightning.errors import ConfigError
from ae_lightning.models.base import AutoencoderBase, Stage


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row, summed over latent units: (B, D) -> (B,), in float32."""
    mu, logvar = mu.float(), logvar.float()
    return -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(1)


class VAE(AutoencoderBase):
    """Variational autoencoder, with a weight beta on the KL term.

    The encoder gives (mu, logvar) of a diagonal Gaussian posterior, a reparameterised sample is decoded, and
    the loss is reconstruction + beta * KL to the N(0, I) prior.

    Args:
        beta: weight of the KL term (1 gives the ELBO).
        **kwargs: the arguments of `AutoencoderBase`.
    """

    def __init__(self, beta: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if beta < 0:
            raise ConfigError(f"beta must be >= 0 (the weight of the KL term), got {beta}")
        self.beta = beta

    def _encoder_out_dim(self) -> int:
        return 2 * self.latent_dim

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) -> (mu, logvar), each (B, latent_dim)."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def latent(self, x: Tensor) -> Tensor:
        """Posterior mean, (B, latent_dim)."""
        return self.encode(x)[0]

    @staticmethod
    def reparameterize(mu: Tensor, logvar: Tensor) -> Tensor:
        """A sample z = mu + sigma * eps, differentiable in mu and logvar: (B, D)."""
        return mu + (0.5 * logvar).exp() * torch.randn_like(mu)

    def loss_terms(self, x: Tensor, stage: Stage) -> dict[str, Tensor]:
        mu, logvar = self.encode(x)
        recon = self.reconstruction_loss(self.decoder(self.reparameterize(mu, logvar)), x)
        kl = gaussian_kl(mu, logvar)
        return {"loss": recon + self.beta * kl, "recon": recon, "kl": kl}

    def anomaly_score(self, x: Tensor, num_samples: int = 16) -> Tensor:
        """Negative ELBO of each image (beta = 1), its reconstruction term averaged over `num_samples`
        posterior samples: (B, C, H, W) -> (B,)."""
        mu, logvar = self.encode(x)
        recon = torch.stack(
            [
                self.reconstruction_loss(self.decoder(self.reparameterize(mu, logvar)), x)
                for _ in range(num_samples)
            ]
        ).mean(0)
        return recon + gaussian_kl(mu, logvar)

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """Images decoded from `num_samples` draws of the N(0, I) prior: (num_samples, C, H, W).

        `generator` (a CPU generator) makes the draws repeatable.
        """
        z = torch.randn(num_samples, self.latent_dim, generator=generator)
        return self.decode(z.to(self.device, self.dtype))
