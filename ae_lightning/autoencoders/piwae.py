"""The partially importance-weighted autoencoder (Rainforth et al., "Tighter variational bounds are not
necessarily better", ICML 2018): the encoder and the decoder trained on different bounds of the same draws."""

from typing import Any

from torch import Tensor

from ae_lightning.autoencoders.interface import OptimizedPart, SeveralOptimizers
from ae_lightning.autoencoders.iwae import MIWAE
from ae_lightning.autoencoders.vae import gaussian_kl, iwae_bound
from ae_lightning.batch import Batch


def miwae_bound(log_weights: Tensor, num_estimates: int) -> Tensor:
    """The mean of `num_estimates` (M) K-sample bounds, the M K draws of each image split into M groups of K
    consecutive rows: (M K, B) -> (B,)."""
    grouped = log_weights.view(num_estimates, -1, log_weights.shape[-1])  # (M, K, B)
    return iwae_bound(grouped.transpose(0, 1)).mean(0)


class PIWAE(MIWAE, SeveralOptimizers):
    """IWAE whose encoder (the inference network) is trained on the MIWAE bound, the mean of M bounds of K
    samples, and whose decoder (the generative network) on the IWAE bound of all M K samples, both from the
    same M K posterior draws of each image.

    The tighter IWAE bound gives the decoder better gradients as the samples grow, but the encoder's gradient
    under it has a signal-to-noise ratio that falls as 1 / sqrt(M K); the MIWAE bound keeps the encoder's
    ratio growing with M. Two optimizers: `encoder` minimises `encoder_loss` (minus the MIWAE bound), with
    respect to the encoder's weights only; `decoder` minimises `loss` (minus the M K-sample IWAE bound), with
    respect to the decoder's only. `loss` is the generative model's objective, the tighter bound on log p(x):
    what `val/loss` reports and checkpoints monitor. Also reports `bound` (the M K-sample bound),
    `miwae_bound`, `recon` (averaged over the draws) and `kl` (analytic), as the IWAE.

    Args:
        num_samples: K, the samples of each of the encoder's M bounds. Default 8 with M = 8: the paper's
            (M, K) = (8, 8), 64 draws per image (pythae's PIWAEConfig: M = 5, K = 10). Each draw costs one
            decoder pass.
        num_estimates: M, the bounds the encoder's objective averages; M = 1 trains both on the IWAE bound.
        **kwargs: the arguments of `VAE`; `beta` and `kl_warmup_steps` must stay at 1 and 0, as for `IWAE`.
    """

    def __init__(self, num_samples: int = 8, num_estimates: int = 8, **kwargs: Any) -> None:
        super().__init__(num_samples=num_samples, num_estimates=num_estimates, **kwargs)

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        draws = self.num_estimates * self.num_samples
        # both bounds need the gradient of all M K draws at once: one chunk
        log_weights, recon, mu, logvar = self.log_weights(batch, draws, chunk_size=draws)
        bound, encoder_bound = iwae_bound(log_weights), miwae_bound(log_weights, self.num_estimates)
        return {
            "loss": -bound,
            "encoder_loss": -encoder_bound,
            "bound": bound,
            "miwae_bound": encoder_bound,
            "recon": recon.mean(0),
            "kl": gaussian_kl(mu, logvar),
        }

    def optimized_parts(self) -> tuple[OptimizedPart, ...]:
        return (
            OptimizedPart("encoder", tuple(self.encoder.parameters()), "encoder_loss"),
            OptimizedPart("decoder", tuple(self.decoder.parameters()), "loss"),
        )
