"""The sparse autoencoder: an L1 penalty on the code, or the KL sparsity penalty of Ng's lecture notes
("Sparse autoencoder", CS294A, 2011)."""

from typing import Any, Literal

import torch
from torch import Tensor

from ae_lightning.autoencoders.base import Autoencoder
from ae_lightning.batch import Batch
from ae_lightning.errors import ConfigError

SparsityPenalty = Literal["kl", "l1"]


def bernoulli_kl(target: float, rates: Tensor) -> Tensor:
    """KL(Bernoulli(target) || Bernoulli(rate)) of each unit, summed: (D,) -> scalar."""
    rates = rates.clamp(1e-6, 1 - 1e-6)  # a unit never (or always) on would give an infinite penalty
    return (target * (target / rates).log() + (1 - target) * ((1 - target) / (1 - rates)).log()).sum()


class SparseAE(Autoencoder):
    """Autoencoder whose code is pushed towards few active units; the code may be wider than the input.

    `kl`: the code is sigmoid(encoder(x)) in (0, 1) and the penalty is sum_j KL(rho || rho_hat_j), rho_hat_j
    being the mean activation of unit j over the batch and rho the `sparsity_target` (the penalty is a batch
    statistic, so each image of the batch carries the same value). `l1`: the code is relu(encoder(x)) and the
    penalty the L1 norm of each image's code. Reports `sparsity` (the penalty, unweighted) and
    `mean_activation` (the mean over units of each image's code).

    Args:
        sparsity_penalty: `kl` or `l1`.
        sparsity_weight: weight of the penalty in the loss.
        sparsity_target: rho, the mean activation the `kl` penalty aims at, in (0, 1).
        **kwargs: the arguments of `Autoencoder`.
    """

    def __init__(
        self,
        sparsity_penalty: SparsityPenalty = "kl",
        sparsity_weight: float = 1.0,
        sparsity_target: float = 0.05,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if sparsity_penalty not in ("kl", "l1"):
            raise ConfigError(f"sparsity_penalty must be 'kl' or 'l1', got {sparsity_penalty!r}")
        if sparsity_weight < 0:
            raise ConfigError(f"sparsity_weight must be >= 0, got {sparsity_weight}")
        if not 0 < sparsity_target < 1:
            raise ConfigError(f"sparsity_target must be a mean activation in (0, 1), got {sparsity_target}")
        self.sparsity_penalty = sparsity_penalty
        self.sparsity_weight = sparsity_weight
        self.sparsity_target = sparsity_target

    def code(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> code (B, latent_dim): in (0, 1) for the `kl` penalty, >= 0 for `l1`."""
        pre_activation = self.encoder(x)
        return torch.sigmoid(pre_activation) if self.sparsity_penalty == "kl" else torch.relu(pre_activation)

    def sparsity(self, code: Tensor) -> Tensor:
        """The penalty of each image, (B, latent_dim) -> (B,), in float32."""
        code = code.float()
        if self.sparsity_penalty == "l1":
            return code.abs().sum(1)
        return bernoulli_kl(self.sparsity_target, code.mean(0)).expand(code.shape[0])

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        code = self.code(batch.inputs)
        recon = self.reconstruction_loss(self.decoder(code), batch.inputs)
        sparsity = self.sparsity(code)
        return {
            "loss": recon + self.sparsity_weight * sparsity,
            "recon": recon,
            "sparsity": sparsity,
            "mean_activation": code.float().mean(1),
        }
