"""The adversarial autoencoder (Makhzani et al., "Adversarial Autoencoders", 2015): a deterministic
autoencoder whose codes a discriminator pushes towards the prior."""

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ae_lightning.autoencoders.base import Autoencoder
from ae_lightning.autoencoders.discriminators import (
    CodeDiscriminator,
    adversarial_parts,
    binary_cross_entropy,
    correct,
)
from ae_lightning.autoencoders.interface import Generative, OptimizedPart, SeveralOptimizers
from ae_lightning.batch import Batch
from ae_lightning.errors import ConfigError
from ae_lightning.nets.sampling import standard_normal


class AdversarialAE(Autoencoder, Generative, SeveralOptimizers):
    """Adversarial autoencoder with a deterministic encoder and the N(0, prior_std^2 I) prior: a GAN on the
    codes matches the aggregate posterior q(z) to the prior, so decoded prior draws are samples.

    A discriminator D gives the probability that a code is a prior draw rather than the code of an image:

        loss = reconstruction + adversarial_weight * BCE(D(z), prior)        (the `autoencoder` optimizer)
        discriminator_loss = BCE(D(z'), prior) + BCE(D(z), code)        (the `discriminator` one)

    z = encoder(x), z' one prior draw per image. The encoder is the generator: it fools D by making its codes
    look like prior draws. D learns on detached codes, so its loss gives the encoder no gradient. The paper
    alternates a reconstruction phase and a regularisation phase (D, then the encoder as generator); here
    both optimizers step on one batch at once. Reports `recon`, `adversarial` (the generator's BCE,
    unweighted), `discriminator_loss` and `discriminator_accuracy` (on both halves). Evaluation draws fresh
    prior codes as training does.

    Args:
        adversarial_weight: weight of the generator's BCE against the summed reconstruction term. The paper's
            two phases weigh them alike (1); pythae's default 0.5 halves its BCE against a halved squared
            error, the same ratio.
        discriminator_dims: widths of D's hidden layers, each followed by a ReLU (the paper on MNIST: two of
            1000).
        prior_std: standard deviation of the Gaussian prior in every latent unit.
        **kwargs: the arguments of `Autoencoder`.
    """

    def __init__(
        self,
        adversarial_weight: float = 1.0,
        discriminator_dims: Sequence[int] = (1000, 1000),
        prior_std: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if adversarial_weight < 0:
            raise ConfigError(
                "adversarial_weight must be >= 0 (the weight of the generator's loss), "
                f"got {adversarial_weight}"
            )
        if prior_std <= 0:
            raise ConfigError(f"prior_std must be > 0 (the prior's standard deviation), got {prior_std}")
        self.adversarial_weight = adversarial_weight
        self.prior_std = prior_std
        self.discriminator = CodeDiscriminator(self.latent_dim, discriminator_dims, "relu")

    def optimized_parts(self) -> tuple[OptimizedPart, ...]:
        return adversarial_parts(self, self.discriminator)

    def prior_noise(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """`num_samples` prior draws, (num_samples, latent_dim), on the model's device; `generator` (a CPU
        generator) makes them repeatable."""
        draws = standard_normal((num_samples, self.latent_dim), generator, self.device, self.dtype)
        return self.prior_std * draws

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        return self.decode(self.prior_noise(num_samples, generator))

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        z = self.code(batch.inputs)
        recon = self.reconstruction_loss(self.decoder(z), batch.inputs)
        prior = self.prior_noise(z.shape[0]).to(z.dtype)
        fooling = self.discriminator(z).float()  # carries the encoder's gradient
        # D's own loss on detached codes, in a pass of its own: no path from it reaches the encoder
        codes, draws = self.discriminator(torch.cat([z.detach(), prior])).float().chunk(2)
        adversarial = binary_cross_entropy(fooling, 1.0)
        return {
            "loss": recon + self.adversarial_weight * adversarial,
            "recon": recon,
            "adversarial": adversarial,
            "discriminator_loss": binary_cross_entropy(draws, 1.0) + binary_cross_entropy(codes, 0.0),
            "discriminator_accuracy": 0.5 * (correct(draws, 1.0) + correct(codes, 0.0)),
        }
