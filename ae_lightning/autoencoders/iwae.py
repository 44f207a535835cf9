"""The importance-weighted autoencoder (Burda, Grosse & Salakhutdinov, 2016)."""

from typing import Any

from torch import Tensor

from ae_lightning.autoencoders.vae import VAE, gaussian_kl, iwae_bound
from ae_lightning.batch import Batch
from ae_lightning.errors import ConfigError


class IWAE(VAE):
    """VAE trained on the k-sample importance-weighted bound, which tightens towards log p(x) as k grows.

    bound_k(x) = log (1/k) sum_i p(x | z_i) p(z_i) / q(z_i | x), with z_1..z_k drawn from q(z | x); k = 1 is
    the ELBO with a one-sample estimate of the KL. log p(x | z) is minus the reconstruction term (for
    `gaussian` up to a constant), as in the VAE. Reports `bound` (the k-sample bound, per image), and `recon`
    (averaged over the k samples) and `kl` (analytic) for comparison with the VAE; `loss` is minus the bound.

    Args:
        num_samples: k, the importance samples per image, in training and evaluation. Each costs one decoder
            pass.
        **kwargs: the arguments of `VAE`; `beta` and `kl_warmup_steps` must stay at 1 and 0 (the bound has
            no KL weight).
    """

    def __init__(self, num_samples: int = 5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_samples < 1:
            raise ConfigError(f"num_samples must be at least 1 (k = 1 gives the ELBO), got {num_samples}")
        if self.beta != 1.0 or self.kl_warmup_steps != 0:
            raise ConfigError(
                "IWAE has no KL weight: leave beta at 1 and kl_warmup_steps at 0 "
                f"(got beta {self.beta}, kl_warmup_steps {self.kl_warmup_steps}); use VAE for a beta-VAE"
            )
        self.num_samples = num_samples

    def bound(self, batch: Batch, num_samples: int) -> Tensor:
        """The `num_samples`-sample importance-weighted bound of each image, (B,)."""
        return iwae_bound(self.log_weights(batch, num_samples)[0])

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        # training needs the gradient of all k samples at once: one chunk
        log_weights, recon, mu, logvar = self.log_weights(
            batch, self.num_samples, chunk_size=self.num_samples
        )
        bound = iwae_bound(log_weights)
        return {"loss": -bound, "bound": bound, "recon": recon.mean(0), "kl": gaussian_kl(mu, logvar)}
