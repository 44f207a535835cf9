"""A discriminator over latent codes, and the per-image losses of models that train one against their
autoencoder (FactorVAE, the adversarial autoencoder)."""

from collections.abc import Sequence
from itertools import pairwise
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ae_lightning.autoencoders.interface import OptimizedPart
from ae_lightning.errors import ConfigError

Activation = Literal["leaky_relu", "relu"]


class CodeDiscriminator(nn.Module):
    """An MLP that gives one logit per code, (B, latent_dim) -> (B,): the log-odds that a code came from the
    distribution labelled 1 (each model says which that is).

    Args:
        latent_dim: size of the codes.
        hidden_dims: widths of the hidden layers ([] gives logistic regression).
        activation: `leaky_relu` (slope 0.2, FactorVAE's) or `relu` (the adversarial autoencoder's).
    """

    def __init__(self, latent_dim: int, hidden_dims: Sequence[int], activation: Activation) -> None:
        super().__init__()
        hidden_dims = [int(width) for width in hidden_dims]
        if any(width <= 0 for width in hidden_dims):
            raise ConfigError(f"discriminator_dims must be positive layer widths, got {hidden_dims}")
        if activation not in ("leaky_relu", "relu"):
            raise ConfigError(f"activation must be 'leaky_relu' or 'relu', got {activation!r}")
        layers: list[nn.Module] = []
        dims = [latent_dim, *hidden_dims]
        for in_dim, out_dim in pairwise(dims):
            layers += [
                nn.Linear(in_dim, out_dim),
                nn.LeakyReLU(0.2) if activation == "leaky_relu" else nn.ReLU(),
            ]
        self.net = nn.Sequential(*layers, nn.Linear(dims[-1], 1))

    def forward(self, z: Tensor) -> Tensor:
        """Codes (B, latent_dim) -> logits (B,)."""
        return self.net(z)[:, 0]


def binary_cross_entropy(logits: Tensor, label: float) -> Tensor:
    """-log sigmoid(logit) for label 1, -log(1 - sigmoid(logit)) for label 0, of each logit: (B,) -> (B,),
    in float32 (mixed precision computes the logits in bfloat16)."""
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label), reduction="none")


def correct(logits: Tensor, label: float) -> Tensor:
    """1.0 where the logit's sign picks `label` (1: positive, 0: negative), else 0.0: (B,) float32."""
    return ((logits > 0) == (label > 0.5)).float()


def adversarial_parts(model: nn.Module, discriminator: nn.Module) -> tuple[OptimizedPart, OptimizedPart]:
    """The two optimizers of an autoencoder trained against a discriminator: `autoencoder` steps every
    trainable parameter outside `discriminator` on `loss`, `discriminator` steps its own on
    `discriminator_loss`."""
    owned = {id(parameter) for parameter in discriminator.parameters()}
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    return (
        OptimizedPart("autoencoder", tuple(p for p in trainable if id(p) not in owned), "loss"),
        OptimizedPart("discriminator", tuple(p for p in trainable if id(p) in owned), "discriminator_loss"),
    )
