"""The conditional VAE (Sohn et al., 2015): encoder and decoder both see the class label."""

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ae_lightning.errors import ConfigError
from ae_lightning.models.base import Stage
from ae_lightning.models.vae import VAE
from ae_lightning.nets import build_decoder
from ae_lightning.nets.conditional import OneHotConditionedDecoder, OneHotConditionedEncoder


class ConditionalVAE(VAE):
    """VAE whose encoder q(z | x, y) and decoder p(x | z, y) are conditioned on the one-hot label y.

    Batches must be (images, labels). Every method that touches the networks takes the labels too:
    `encode(x, labels)`, `decode(z, labels)`, `model(x, labels)`, ... Sample grids show one row per class,
    every row decoded from the same noise, so a column shows one "style" drawn as each class.

    Args:
        num_classes: number of classes; labels must lie in [0, num_classes).
        **kwargs: the arguments of `VAE` (beta, kl_warmup_steps) and `AutoencoderBase`.
    """

    def __init__(self, num_classes: int = 10, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_classes < 2:
            raise ConfigError(f"num_classes must be at least 2 to condition on a label, got {num_classes}")
        self.num_classes = num_classes
        backbone = self.hparams.backbone
        # the base built networks that see no label: replace them by ones that do
        self.encoder = OneHotConditionedEncoder(
            backbone, self.image_shape, self.hidden_dims, 2 * self.latent_dim, num_classes
        )
        self.decoder = OneHotConditionedDecoder(
            build_decoder(backbone, self.latent_dim + num_classes, self.hidden_dims, self.image_shape)
        )
        self.example_input_array = (torch.zeros(2, *self.image_shape), torch.zeros(2, dtype=torch.long))

    def conditions_of(self, batch: Tensor | Sequence[Tensor]) -> dict[str, Tensor]:
        """The labels of an (images, labels) batch."""
        if isinstance(batch, Tensor) or len(batch) < 2:
            raise ConfigError(
                "ConditionalVAE needs labelled batches (images, labels), but the datamodule gave images only"
            )
        return {"labels": batch[1]}

    def one_hot(self, labels: Tensor) -> Tensor:
        """(B,) integer labels -> (B, num_classes) one-hot rows in the model's dtype."""
        labels = labels.long()
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ConfigError(
                f"labels must lie in [0, {self.num_classes}), got values from {labels.min().item()} to "
                f"{labels.max().item()}: set --model.num_classes to the number of classes of the data"
            )
        return F.one_hot(labels, self.num_classes).to(self.dtype)

    def encode(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) images and (B,) labels -> (mu, logvar), each (B, latent_dim)."""
        mu, logvar = self.encoder(x, self.one_hot(labels)).chunk(2, dim=1)
        return mu, logvar

    def latent(self, x: Tensor, labels: Tensor) -> Tensor:
        """Posterior mean, (B, latent_dim)."""
        return self.encode(x, labels)[0]

    def decode(self, z: Tensor, labels: Tensor) -> Tensor:
        """Codes (B, latent_dim) and (B,) labels -> mean of the output distribution, (B, C, H, W)."""
        return self.output_mean(self.decoder(z, self.one_hot(labels)))

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        """Reconstruction of `x` given its labels, (B, C, H, W) -> (B, C, H, W)."""
        return self.decode(self.latent(x, labels), labels)

    def loss_terms(self, x: Tensor, stage: Stage, labels: Tensor) -> dict[str, Tensor]:
        mu, logvar = self.encode(x, labels)
        decoder_output = self.decoder(self.reparameterize(mu, logvar), self.one_hot(labels))
        return self.elbo_terms(x, decoder_output, mu, logvar, stage)

    def posterior(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Callable[[Tensor], Tensor]]:
        """(mu, logvar) of q(z | x, y) and the raw decoder given the labels (repeated for n draws each)."""
        one_hot = self.one_hot(labels)
        mu, logvar = self.encode(x, labels)
        return mu, logvar, lambda z: self.decoder(z, one_hot.repeat(len(z) // len(one_hot), 1))

    def anomaly_score(self, x: Tensor, labels: Tensor, num_samples: int = 16) -> Tensor:
        """Negative conditional ELBO of each image given its label (beta = 1): (B,)."""
        one_hot = self.one_hot(labels)
        return self.negative_elbo(x, *self.encode(x, labels), lambda z: self.decoder(z, one_hot), num_samples)

    def sample(
        self, num_samples: int, generator: torch.Generator | None = None, labels: Tensor | None = None
    ) -> Tensor:
        """Images decoded from `num_samples` prior draws, given `labels` (num_samples,) (default: the
        classes in turn, 0, 1, ..., num_classes - 1, 0, ...): (num_samples, C, H, W)."""
        if labels is None:
            labels = torch.arange(num_samples) % self.num_classes
        return self.decode(self.prior_noise(num_samples, generator), labels.to(self.device))

    def samples_for_grid(
        self, num_samples: int, nrow: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """One row of `nrow` images per class, every row decoded from the same `nrow` prior draws:
        (num_classes * nrow, C, H, W). `num_samples` is not used: the classes set the number of rows."""
        z = self.prior_noise(nrow, generator).repeat(self.num_classes, 1)
        labels = torch.arange(self.num_classes, device=self.device).repeat_interleave(nrow)
        return self.decode(z, labels)
