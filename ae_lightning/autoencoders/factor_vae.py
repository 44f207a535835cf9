"""FactorVAE (Kim & Mnih, "Disentangling by Factorising", ICML 2018): a VAE with a penalty on the total
correlation of its codes, estimated by a discriminator."""

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ae_lightning.autoencoders.discriminators import (
    CodeDiscriminator,
    adversarial_parts,
    binary_cross_entropy,
    correct,
)
from ae_lightning.autoencoders.interface import OptimizedPart, SeveralOptimizers
from ae_lightning.autoencoders.vae import VAE
from ae_lightning.batch import Batch
from ae_lightning.errors import ConfigError


def permute_dims(z: Tensor) -> Tensor:
    """Each column of `z` (B, D) shuffled across the rows independently of the others: draws from the
    product of the marginals of the codes' distribution. The permutations are drawn on the device (argsort
    of uniform numbers), so the host never waits."""
    order = torch.rand(z.shape, device=z.device).argsort(0)
    return z.gather(0, order)


class FactorVAE(VAE, SeveralOptimizers):
    """FactorVAE: the VAE's objective plus gamma times the total correlation of the aggregate posterior,
    TC = KL(q(z) || prod_d q(z_d)), estimated with the density-ratio trick.

    A discriminator D gives the probability that a code was drawn from q(z) rather than from the product of
    its marginals; at its optimum log D / (1 - D) = log q(z) / prod_d q(z_d), so TC is estimated by D's mean
    logit at the posterior draws:

        loss = reconstruction + beta * KL + gamma * logit D(z)        (the `autoencoder` optimizer)
        discriminator_loss = (BCE(D(z), q(z)) + BCE(D(z~), product)) / 2    (the `discriminator` one)

    where z~ is the batch's codes with each latent unit shuffled across the batch independently. D learns on
    detached codes: its loss gives the encoder no gradient. Kim & Mnih shuffle the codes of a second batch;
    here they are the same batch's (one encoder pass per step; a shuffled row equals a real one with
    negligible probability). Reports `recon`, `kl` (and `kl_dim/<i>` at evaluation, as the VAE), `tc` (the
    estimate, unweighted), `discriminator_loss` and `discriminator_accuracy` (on both halves). Evaluation
    computes the same terms, with a posterior draw and a shuffle as in training.

    Args:
        gamma: weight of the total correlation. Kim & Mnih tune it per data set (tens on 2D Shapes; pythae
            reproduces dSprites with 35, and defaults to 2). 10 keeps a clear penalty on MNIST-sized
            images, whose summed reconstruction term has the paper's scale.
        discriminator_dims: widths of D's hidden layers, each followed by a LeakyReLU of slope 0.2 (the
            paper: six of 1000).
        **kwargs: the arguments of `VAE` (beta = 1, the paper's, weighs the KL as in the ELBO).
    """

    def __init__(
        self, gamma: float = 10.0, discriminator_dims: Sequence[int] = (1000,) * 6, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if gamma < 0:
            raise ConfigError(f"gamma must be >= 0 (the weight of the total correlation), got {gamma}")
        self.gamma = gamma
        self.discriminator = CodeDiscriminator(self.latent_dim, discriminator_dims, "leaky_relu")

    def optimized_parts(self) -> tuple[OptimizedPart, ...]:
        return adversarial_parts(self, self.discriminator)

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        mu, logvar, z, recon = self.posterior_draw(batch)
        kl_terms = self.kl_terms(mu, logvar, z)
        tc = self.discriminator(z).float()  # carries the encoder's gradient
        # D's own loss on detached codes, in a pass of its own: no path from it reaches the encoder
        codes = z.detach()
        joint, product = self.discriminator(torch.cat([codes, permute_dims(codes)])).float().chunk(2)
        discriminator_loss = 0.5 * (binary_cross_entropy(joint, 1.0) + binary_cross_entropy(product, 0.0))
        # as the VAE's: the warm-up schedules training only
        weight = self.kl_weight() if self.training else self.beta
        return {
            "loss": recon + weight * kl_terms["kl"] + self.gamma * tc,
            "recon": recon,
            **kl_terms,
            "tc": tc,
            "discriminator_loss": discriminator_loss,
            "discriminator_accuracy": 0.5 * (correct(joint, 1.0) + correct(product, 0.0)),
        }
