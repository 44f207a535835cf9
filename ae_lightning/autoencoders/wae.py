"""Autoencoders whose codes are matched to the prior by the maximum mean discrepancy: the Wasserstein
autoencoder (Tolstikhin et al., 2018) and InfoVAE (Zhao, Song & Ermon, 2019)."""

from typing import Any

import torch
from torch import Tensor

from ae_lightning.autoencoders.base import Autoencoder
from ae_lightning.autoencoders.interface import Generative
from ae_lightning.autoencoders.mmd import Kernel, check_kernel, prior_mmd
from ae_lightning.autoencoders.vae import VAE
from ae_lightning.batch import Batch
from ae_lightning.errors import ConfigError
from ae_lightning.nets.sampling import standard_normal


class WAE(Autoencoder, Generative):
    """Wasserstein autoencoder with the MMD penalty (WAE-MMD): a deterministic encoder whose codes, taken
    together, are pushed towards the N(0, I) prior.

    loss = reconstruction + reg_weight * MMD^2(codes of the batch, as many prior draws), the MMD an unbiased
    estimate over the batch (a batch statistic: every image of a batch carries the same value). Samples are
    prior draws decoded. Reports `recon` and `mmd` (unweighted).

    Args:
        kernel: `imq` (inverse multiquadratic, summed over seven scales; the paper's choice) or `rbf`.
        kernel_bandwidth: the prior's standard deviation that sets the kernel's scale (C = 2 D bandwidth^2).
        reg_weight: lambda, the weight of the MMD (Tolstikhin et al.: 10 on MNIST).
        **kwargs: the arguments of `Autoencoder`.
    """

    def __init__(
        self, kernel: Kernel = "imq", kernel_bandwidth: float = 1.0, reg_weight: float = 10.0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        check_kernel(kernel, kernel_bandwidth)
        if reg_weight < 0:
            raise ConfigError(f"reg_weight must be >= 0 (the weight of the MMD), got {reg_weight}")
        self.kernel: Kernel = kernel
        self.kernel_bandwidth = kernel_bandwidth
        self.reg_weight = reg_weight

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        z = self.code(batch.inputs)
        recon = self.reconstruction_loss(self.decoder(z), batch.inputs)
        divergence = prior_mmd(z, self.kernel, self.kernel_bandwidth)
        return {"loss": recon + self.reg_weight * divergence, "recon": recon, "mmd": divergence}

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        return self.decode(
            standard_normal((num_samples, self.latent_dim), generator, self.device, self.dtype)
        )


class InfoVAE(VAE):
    """InfoVAE with the MMD divergence: the VAE's objective with the KL reweighted and an MMD between the
    aggregate posterior q(z) and the prior added, so the code keeps information about the input.

    loss = reconstruction + (1 - alpha) * KL(q(z | x) || p(z)) + (alpha + lambda - 1) * MMD^2(q(z), p(z)),
    the MMD over the batch's posterior draws (a batch statistic). alpha = 1 drops the KL (the "MMD-VAE").
    Reports `recon`, `kl` and `mmd` (unweighted); the test NLL is the VAE's importance-sampled estimate.

    Args:
        alpha: how much of the KL is removed, at most 1.
        lbd: lambda, with alpha the weight of the MMD, alpha + lambda - 1 >= 0. pythae's default (alpha 0,
            lambda 1e-3) gives the MMD a negative weight, and is refused here; Zhao et al. use lambda in the
            hundreds to a thousand.
        kernel, kernel_bandwidth: the MMD's kernel, as `WAE`'s.
        **kwargs: the arguments of `VAE` (`beta` and `kl_warmup_steps` must stay at 1 and 0: alpha weighs the
            KL here).
    """

    def __init__(
        self,
        alpha: float = 0.0,
        lbd: float = 1000.0,
        kernel: Kernel = "imq",
        kernel_bandwidth: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_kernel(kernel, kernel_bandwidth)
        if alpha > 1:
            raise ConfigError(f"alpha must be at most 1 (the KL's weight is 1 - alpha), got {alpha}")
        if alpha + lbd - 1 < 0:
            raise ConfigError(
                f"alpha + lbd - 1 is the MMD's weight and must be >= 0, got alpha {alpha}, lbd {lbd}: "
                "raise lbd (Zhao et al. use hundreds to a thousand)"
            )
        if self.beta != 1.0 or self.kl_warmup_steps != 0:
            raise ConfigError(
                "InfoVAE weighs the KL by 1 - alpha: leave beta at 1 and kl_warmup_steps at 0 "
                f"(got beta {self.beta}, kl_warmup_steps {self.kl_warmup_steps})"
            )
        self.alpha = alpha
        self.lbd = lbd
        self.kernel: Kernel = kernel
        self.kernel_bandwidth = kernel_bandwidth

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        mu, logvar, z, recon = self.posterior_draw(batch)
        kl_terms = self.kl_terms(mu, logvar, z)
        divergence = prior_mmd(z, self.kernel, self.kernel_bandwidth)
        loss = recon + self.kl_weight() * kl_terms["kl"] + (self.alpha + self.lbd - 1) * divergence
        return {"loss": loss, "recon": recon, **kl_terms, "mmd": divergence}

    def kl_weight(self) -> float:
        """The KL's weight, 1 - alpha (logged as `train/kl_weight`)."""
        return 1 - self.alpha
