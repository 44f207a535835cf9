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


class MIWAE(IWAE):
    """IWAE trained on the average of M independent K-sample bounds (Rainforth et al., "Tighter variational
    bounds are not necessarily better", ICML 2018): M K draws per image, split into M groups of K.

    The K-sample bound keeps the IWAE's tighter objective for the decoder, while the average over M gives
    the encoder a gradient whose signal-to-noise ratio does not fall as K grows. M = 1 is the IWAE.
    Reports `bound` (the mean of the M bounds), `recon` and `kl` as the IWAE.

    Args:
        num_estimates: M, the bounds averaged.
        **kwargs: the arguments of `IWAE` (`num_samples` is K); each image costs M K decoder passes.
    """

    def __init__(self, num_estimates: int = 4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_estimates < 1:
            raise ConfigError(f"num_estimates must be at least 1 (M = 1 is the IWAE), got {num_estimates}")
        self.num_estimates = num_estimates

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        draws = self.num_estimates * self.num_samples
        log_weights, recon, mu, logvar = self.log_weights(batch, draws, chunk_size=draws)
        bounds = iwae_bound(log_weights.view(self.num_estimates, self.num_samples, -1).transpose(0, 1))
        bound = bounds.mean(0)
        return {"loss": -bound, "bound": bound, "recon": recon.mean(0), "kl": gaussian_kl(mu, logvar)}


class CIWAE(IWAE):
    """IWAE trained on a convex combination of the ELBO and the K-sample bound, on the same K draws
    (Rainforth et al., 2018): elbo_weight * ELBO + (1 - elbo_weight) * IWAE bound.

    Reports `elbo` (the mean over the K draws of the log weights), `bound` (the K-sample bound), `recon` and
    `kl` as the IWAE.

    Args:
        elbo_weight: beta in the paper, in [0, 1]: 1 gives the VAE's objective (a K-draw ELBO), 0 the IWAE.
        **kwargs: the arguments of `IWAE`.
    """

    def __init__(self, elbo_weight: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0 <= elbo_weight <= 1:
            raise ConfigError(
                f"elbo_weight must lie in [0, 1] (1: the ELBO, 0: the IWAE bound), got {elbo_weight}"
            )
        self.elbo_weight = elbo_weight

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        log_weights, recon, mu, logvar = self.log_weights(
            batch, self.num_samples, chunk_size=self.num_samples
        )
        elbo, bound = log_weights.mean(0), iwae_bound(log_weights)
        objective = self.elbo_weight * elbo + (1 - self.elbo_weight) * bound
        return {
            "loss": -objective,
            "elbo": elbo,
            "bound": bound,
            "recon": recon.mean(0),
            "kl": gaussian_kl(mu, logvar),
        }
