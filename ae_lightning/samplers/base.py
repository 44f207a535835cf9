"""What every post-hoc sampler is: codes drawn for a trained model's decoder, from its prior or from a
distribution fitted to the codes of the training images (plain PyTorch, no Lightning)."""

from abc import ABC
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ae_lightning.autoencoders import Autoencoder, Conditional, Reconstructs
from ae_lightning.nets.sampling import standard_normal

#: what `fit` calls after each unit of its work (done, total), for a progress bar
Progress = Callable[[int, int], None]
#: where codes live, in words (`Autoencoder.latent_space`)
SPACES = {
    "euclidean": "vectors in R^D",
    "sphere": "on the unit sphere",
    "poincare_ball": "on the Poincaré ball",
    "discrete": "codebook entries",
}


def where_codes_live(model: Autoencoder) -> str:
    """`model`'s latent space in words, for a refusal."""
    return SPACES[model.latent_space]


class Sampler(nn.Module, ABC):
    """Draws codes that a model's decoder turns into images.

    A sampler is built for one model (`for_model`), which it may read but does not hold: its state (a fitted
    mixture, a flow's weights) is its own, saved apart from the model's weights. One that is `fitted` learns
    a distribution of the codes of the training images (`fit`); the others draw from what the model has (its
    prior). `refusal` says, in one line, why a model cannot use it.

    Args:
        latent_dim: the size of the codes it draws.
    """

    #: the name `sample --sampler` takes
    name: ClassVar[str]
    #: whether it is fitted on the training split's codes before it draws
    fitted: ClassVar[bool] = False

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim

    @classmethod
    def for_model(cls, model: Autoencoder, **options: Any) -> "Sampler":
        """The sampler for `model` (refused by `refusal`'s reason as a ValueError: check it first)."""
        reason = cls.refusal(model)
        if reason is not None:
            raise ValueError(reason)
        return cls(latent_dim=model.latent_dim, **options)

    @classmethod
    def refusal(cls, model: Autoencoder) -> str | None:
        """Why `model` cannot use this sampler (None: it can). By default: a model whose codes live in R^D,
        decoded without labels."""
        if not isinstance(model, Reconstructs):
            return f"{type(model).__name__} has no decoder to turn codes into images"
        if isinstance(model, Conditional):
            return f"{type(model).__name__} decodes with a label: the {cls.name} sampler draws codes only"
        if model.latent_space != "euclidean":
            return (
                f"the {cls.name} sampler draws codes in R^D, but {type(model).__name__}'s codes are "
                f"{where_codes_live(model)}"
            )
        return None

    def encode(self, model: Autoencoder, inputs: Tensor) -> Tensor:
        """What it is fitted on, for a batch of images: by default the model's deterministic codes (for a
        VAE the posterior means), (B, latent_dim)."""
        return model.code(inputs)

    def fit(self, codes: Tensor, progress: Progress | None = None) -> None:
        """Learns the distribution of the training images' codes (`encode` of every training image, (N, ...),
        on one device), deterministically; a sampler that is not `fitted` has nothing to learn."""

    def noise_size(self) -> int | None:
        """How many independent N(0, 1) numbers `codes_from_noise` maps to one code (None: it draws otherwise,
        and cannot be exported)."""
        return None

    def codes_from_noise(self, model: Autoencoder, noise: Tensor) -> Tensor:
        """N(0, 1) noise (B, noise_size) -> codes (B, latent_dim), deterministically: how it draws, and what
        its exported graph computes."""
        raise NotImplementedError(f"the {self.name} sampler does not draw from noise alone")

    def sample_codes(
        self, model: Autoencoder, num_samples: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """`num_samples` codes, (num_samples, latent_dim) float32, on the model's device; `generator` (a CPU
        generator) makes them repeatable. By default `codes_from_noise` of N(0, 1) draws."""
        size = self.noise_size()
        assert size is not None, f"{type(self).__name__} draws neither from noise nor otherwise"
        where = next(self.buffers(), None)
        device = where.device if where is not None else model.device
        noise = standard_normal((num_samples, size), generator, device, torch.float32)
        return self.codes_from_noise(model, noise).to(model.device, torch.float32)

    def exported_parameters(self) -> dict[str, Any]:
        """What it has fitted, as plain numbers, for `model.json` of an export (a mixture's weights, means and
        Cholesky factors; a network's weights are in its graph only)."""
        return {}

    @torch.no_grad()
    def sample(
        self, model: Autoencoder, num_samples: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """`num_samples` images, (num_samples, C, H, W): the decoded codes."""
        return model.decode(self.sample_codes(model, num_samples, generator).to(model.dtype))

    def options(self) -> dict[str, Any]:
        """The arguments it was built with besides `latent_dim` (saved with a fitted state: a state fitted
        with other options is not reused)."""
        return {}
