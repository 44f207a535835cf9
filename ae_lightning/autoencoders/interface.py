"""What every autoencoder has, and the capabilities some declare, in plain PyTorch (no Lightning).

A model declares a capability by deriving from its class (`class VAE(Autoencoder, Generative,
LogLikelihood)`); callbacks and metrics ask `isinstance(model, Generative)`, never probe for methods.
"""

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

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


class Localizes(ABC):
    """A model that says where an image is anomalous: a per-pixel anomaly map, of which its image score is a
    summary. The localisation metrics, the heat maps, `predict` and the exported scorer ask for it."""

    @abstractmethod
    def anomaly_map(self, batch: Batch) -> Tensor:
        """The anomaly map of each image (higher: more anomalous there), (B, H, W) float32."""

    @abstractmethod
    def localizes(self) -> bool:
        """Whether it gives maps for its data (images do; vectors have no pixels to map)."""


class GaussianPosterior(ABC):
    """A model whose encoder gives a diagonal Gaussian posterior q(z | x); its `latent` is the posterior
    mean. The active-units statistic reads it."""

    @abstractmethod
    def posterior(self, batch: Batch) -> tuple[Tensor, Tensor, Any]:
        """(mu, logvar) of q(z | x), each (B, latent_dim), and the raw decoder of codes of these inputs."""


class DiscreteCode(ABC):
    """A model whose code is a choice among `codebook_size` entries (vector quantisation). The code-usage
    statistic reads it; the pixelcnn sampler (`samplers/pixelcnn.py`) draws `codes` and decodes their
    `code_of`."""

    codebook_size: int
    #: the entries `codes` gives per input
    code_length: int

    @abstractmethod
    def codes(self, x: Tensor) -> Tensor:
        """The chosen entry of each code vector of each input, (B, code_length) int64."""

    @abstractmethod
    def code_of(self, indices: Tensor) -> Tensor:
        """The code `decode` takes for chosen entries: (B, code_length) int64 -> (B, latent_dim), so that
        `code_of(codes(x))` is `code(x)` exactly."""


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


@dataclass(frozen=True)
class OptimizedPart:
    """One optimizer of a model that trains with several (`SeveralOptimizers`): it steps `parameters` along
    the gradient of the batch mean of `loss_terms(batch)[loss]`, at every `every`-th training iteration."""

    #: the optimizer's name, as the config names it (`--model.optimizers`, `--model.lr_schedulers`)
    name: str
    parameters: tuple[nn.Parameter, ...]
    #: the key of `loss_terms` whose batch mean this optimizer minimises
    loss: str
    #: steps at the iterations i with i % every == 0 (1: every iteration)
    every: int = 1


class SeveralOptimizers(ABC):
    """A model trained with several optimizers, each stepping its own parameters on its own loss (a
    discriminator against an autoencoder, an encoder and a decoder on different bounds).

    One training iteration computes `loss_terms(batch)` once, then every part that steps takes the gradient
    of its loss with respect to its own parameters only, all at the same weights, and then they all step
    (the simultaneous update of pythae's coupled and adversarial trainers). `step` counts iterations,
    however many optimizers stepped in one. A plain loop: see `take_part_gradients`.
    """

    @abstractmethod
    def optimized_parts(self) -> tuple[OptimizedPart, ...]:
        """The optimizers, in the order they step; every trainable parameter belongs to exactly one."""

    def checked_parts(self) -> tuple[OptimizedPart, ...]:
        """`optimized_parts()`, refused (ValueError: the model's code is wrong, not the config) unless the
        names are distinct, the parameters are split with none left over, and one part steps every time."""
        parts = self.optimized_parts()
        names = [part.name for part in parts]
        if len(set(names)) != len(names) or min((part.every for part in parts), default=0) != 1:
            raise ValueError(f"{type(self).__name__}: parts need distinct names, one with every=1: {names}")
        if any(part.every < 1 for part in parts):
            raise ValueError(f"{type(self).__name__}: every must be at least 1")
        owned = [id(parameter) for part in parts for parameter in part.parameters]
        assert isinstance(self, nn.Module)
        trainable = [id(parameter) for parameter in self.parameters() if parameter.requires_grad]
        if len(set(owned)) != len(owned) or set(owned) != set(trainable):
            raise ValueError(
                f"{type(self).__name__}: each trainable parameter must be in one part of {names}"
            )
        return parts


def take_part_gradients(
    terms: dict[str, Tensor], parts: Sequence[OptimizedPart], iteration: int
) -> list[OptimizedPart]:
    """Sets the `.grad` of the parameters of each part that steps at `iteration` to the gradient of its
    loss's batch mean (replacing, not adding to, what was there), and returns those parts.

    Each gradient reaches only its own part's parameters: the others' `.grad` is left alone. A plain loop::

        parts = model.checked_parts()
        optimizers = {part.name: torch.optim.Adam(part.parameters) for part in parts}
        for iteration, batch in enumerate(batches):
            model.step = iteration
            for part in take_part_gradients(model.loss_terms(batch), parts, iteration):
                optimizers[part.name].step()
    """
    stepping = [part for part in parts if iteration % part.every == 0]
    for position, part in enumerate(stepping):
        loss = terms[part.loss].mean()
        # all at the same weights: the graph is kept until the last part has its gradient
        gradients = torch.autograd.grad(
            loss, part.parameters, retain_graph=position < len(stepping) - 1, allow_unused=True
        )
        for parameter, gradient in zip(part.parameters, gradients, strict=True):
            parameter.grad = torch.zeros_like(parameter) if gradient is None else gradient
    return stepping
