"""The conditional VAE (Sohn et al., 2015): encoder and decoder both see the class label."""

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ae_lightning.autoencoders.interface import Conditional
from ae_lightning.autoencoders.vae import VAE
from ae_lightning.batch import Batch
from ae_lightning.errors import ConfigError
from ae_lightning.nets import build_decoder, one_hot
from ae_lightning.nets.conditional import OneHotConditionedDecoder, OneHotConditionedEncoder


class ConditionalVAE(VAE, Conditional):
    """VAE whose encoder q(z | x, y) and decoder p(x | z, y) are conditioned on the one-hot label y.

    Batches must carry `labels`. The tensor methods take the labels too: `encode(x, labels)`,
    `decode(z, labels)`, `model(x, labels)`. Sample grids show one row per class, every row decoded from the
    same noise, so a column shows one "style" drawn as each class.

    Args:
        num_classes: number of classes; labels must lie in [0, num_classes) (`Conditional.check_labels`).
        **kwargs: the arguments of `VAE` (beta, kl_warmup_steps, nll_samples) and `Autoencoder`.
    """

    def __init__(self, num_classes: int = 10, **kwargs: Any) -> None:
        if num_classes < 2:
            raise ConfigError(f"num_classes must be at least 2 to condition on a label, got {num_classes}")
        # before the base builds the networks, which see the label (`build_networks`)
        self.num_classes = num_classes
        super().__init__(**kwargs)

    def build_networks(self) -> tuple[nn.Module, nn.Module]:
        encoder = OneHotConditionedEncoder(
            self.backbone, self.image_shape, self.hidden_dims, self.encoder_outputs(), self.num_classes
        )
        decoder = OneHotConditionedDecoder(
            build_decoder(
                self.backbone, self.latent_dim + self.num_classes, self.hidden_dims, self.image_shape
            )
        )
        return encoder, decoder

    def labels_of(self, batch: Batch) -> Tensor:
        """The batch's labels; a batch without them is refused."""
        if batch.labels is None:
            raise ConfigError(
                "ConditionalVAE needs labelled batches (images and labels), but the datamodule gave images "
                "only"
            )
        return batch.labels

    def one_hot(self, labels: Tensor) -> Tensor:
        """(B,) integer labels in [0, num_classes) -> (B, num_classes) one-hot rows in the model's dtype (a
        label outside the range, which `check_labels` refuses before training, would give a row of zeros)."""
        return one_hot(labels, self.num_classes, self.dtype)

    def encode(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """(B, C, H, W) images and (B,) labels -> (mu, logvar), each (B, latent_dim)."""
        mu, logvar = self.encoder(x, self.one_hot(labels)).chunk(2, dim=1)
        return mu, logvar

    def code(self, x: Tensor, labels: Tensor) -> Tensor:  # type: ignore[override]
        """Posterior mean given the labels, (B, latent_dim)."""
        return self.encode(x, labels)[0]

    def decode(self, z: Tensor, labels: Tensor) -> Tensor:  # type: ignore[override]
        """Codes (B, latent_dim) and (B,) labels -> mean of the output distribution, (B, C, H, W)."""
        return self.output_mean(self.decoder(z, self.one_hot(labels)))

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:  # type: ignore[override]
        """Reconstruction of `x` given its labels, (B, C, H, W) -> (B, C, H, W)."""
        return self.decode(self.code(x, labels), labels)

    def latent(self, batch: Batch) -> Tensor:
        return self.code(batch.inputs, self.labels_of(batch))

    def reconstruct(self, batch: Batch) -> Tensor:
        return self(batch.inputs, self.labels_of(batch))

    def posterior(self, batch: Batch) -> tuple[Tensor, Tensor, Callable[[Tensor], Tensor]]:
        """(mu, logvar) of q(z | x, y) and the raw decoder given the labels (repeated for n draws each)."""
        labels = self.labels_of(batch)
        one_hot = self.one_hot(labels)
        mu, logvar = self.encode(batch.inputs, labels)
        return mu, logvar, lambda z: self.decoder(z, one_hot.repeat(z.shape[0] // one_hot.shape[0], 1))

    def sample(
        self, num_samples: int, generator: torch.Generator | None = None, labels: Tensor | None = None
    ) -> Tensor:
        """Images decoded from `num_samples` prior draws, given `labels` (num_samples,) (default: the
        classes in turn, 0, 1, ..., num_classes - 1, 0, ...): (num_samples, C, H, W)."""
        if labels is None:  # made on the device: no copy from the host
            labels = torch.arange(num_samples, device=self.device) % self.num_classes
        return self.decode(self.prior_noise(num_samples, generator), labels.to(self.device))

    def grid_samples(self, num_samples: int, nrow: int, generator: torch.Generator | None = None) -> Tensor:
        """One row of `nrow` images per class, every row decoded from the same `nrow` prior draws:
        (num_classes * nrow, C, H, W). `num_samples` is not used: the classes set the number of rows."""
        z = self.prior_noise(nrow, generator).repeat(self.num_classes, 1)
        labels = torch.arange(self.num_classes, device=self.device).repeat_interleave(nrow)
        return self.decode(z, labels)
