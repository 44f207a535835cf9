"""What every autoencoder has, and the capabilities some declare, in plain PyTorch (no Lightning).

A model declares a capability by deriving from its class (`class VAE(Autoencoder, Generative,
LogLikelihood)`); callbacks and metrics ask `isinstance(model, Generative)`, never probe for methods.
"""

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

from ae_lightning.batch import Batch
from ae_lightning.errors import ConfigError


class Reconstructs(ABC):
    """A model with a decoder: it reconstructs its inputs. Reconstruction metrics, the sample grid's
    reconstruction rows and the exported decoder ask for it (a model without a decoder skips them)."""

    @abstractmethod
    def decode(self, z: Tensor) -> Tensor:
        """Codes (B, latent_dim) -> the output mean, (B, *input_shape)."""

    @abstractmethod
    def reconstruct(self, batch: Batch) -> Tensor:
        """The reconstruction of each input, (B, *input_shape)."""


class GaussianPosterior(ABC):
    """A model whose encoder gives a diagonal Gaussian posterior q(z | x); its `latent` is the posterior
    mean. The active-units statistic reads it."""

    @abstractmethod
    def posterior(self, batch: Batch) -> tuple[Tensor, Tensor, Any]:
        """(mu, logvar) of q(z | x), each (B, latent_dim), and the raw decoder of codes of these inputs."""


class DiscreteCode(ABC):
    """A model whose code is a choice among `codebook_size` entries (vector quantisation). The code-usage
    statistic reads it."""

    codebook_size: int

    @abstractmethod
    def codes(self, x: Tensor) -> Tensor:
        """The chosen entry of each code vector of each input, (B, vectors per input) int64."""


class Generative(ABC):
    """A model with a prior to sample from."""

    @abstractmethod
    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """Images decoded from `num_samples` prior draws, (num_samples, C, H, W); `generator` (a CPU
        generator) makes the draws repeatable."""

    def grid_samples(self, num_samples: int, nrow: int, generator: torch.Generator | None = None) -> Tensor:
        """The samples a picture shows, laid out in rows of `nrow`: by default `num_samples` prior draws."""
        return self.sample(num_samples, generator)


class Denoising(ABC):
    """A model trained on corrupted inputs."""

    @abstractmethod
    def corrupt(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A corrupted copy of `x` (B, C, H, W); `x` itself is left untouched."""


class Conditional(ABC):
    """A model whose networks see each image's class label: its batches must carry `labels`."""

    num_classes: int

    def check_labels(self, low: int, high: int) -> None:
        """Refuses data whose labels run from `low` to `high` unless they all lie in [0, num_classes).

        Training calls it once with the range of the data's labels: checking each batch would make the host
        wait for a GPU at every step."""
        if low < 0 or high >= self.num_classes:
            raise ConfigError(
                f"labels must lie in [0, {self.num_classes}), but the data's run from {low} to {high}: "
                "set --model.num_classes to the number of classes of the data"
            )


class ReadsDatasetSize(ABC):
    """A model whose objective reads N, the number of training images (an estimator over the whole data set
    from one batch, such as beta-TC-VAE's): unless its argument sets it, training takes it from the data
    before the first step."""

    #: N (None: not known yet)
    dataset_size: int | None

    def known_dataset_size(self) -> int:
        """N, or a one-line error saying how to give it."""
        if self.dataset_size is None:
            raise ConfigError(
                f"{type(self).__name__} needs the number of training images: pass dataset_size, or train "
                "through cli.py or a Trainer with a datamodule, which set it from the data"
            )
        return self.dataset_size


class LogLikelihood(ABC):
    """A model that estimates -log p(x) of each image."""

    #: importance samples per image of the estimate (0: the estimate is not computed at test)
    nll_samples: int

    @abstractmethod
    def negative_log_likelihood(
        self, batch: Batch, num_samples: int, chunk_size: int | None = None
    ) -> Tensor:
        """-log p(x) in nats of each image, (B,), estimated with `num_samples` importance samples."""

    def reports_likelihood(self) -> bool:
        """Whether `test` estimates the NLL (the estimate is in nats only for a normalised likelihood)."""
        return self.nll_samples > 0
