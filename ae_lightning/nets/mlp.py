"""Fully connected encoder and decoder for images of any shape."""

from collections.abc import Sequence
from itertools import pairwise
from math import prod

import torch
from torch import Tensor, nn


def _relu_stack(dims: Sequence[int], bias: bool = True) -> list[nn.Module]:
    """Linear layers between consecutive `dims`, each followed by a ReLU."""
    layers: list[nn.Module] = []
    for in_dim, out_dim in pairwise(dims):
        layers += [nn.Linear(in_dim, out_dim, bias=bias), nn.ReLU()]
    return layers


class MLPEncoder(nn.Module):
    """Flattens an image and maps it through ReLU hidden layers to a vector of `out_dim` values; `bias`
    False: no layer has a bias term."""

    def __init__(
        self, image_shape: Sequence[int], hidden_dims: Sequence[int], out_dim: int, bias: bool = True
    ) -> None:
        super().__init__()
        dims = [prod(image_shape), *hidden_dims]
        self.num_hidden_layers = len(hidden_dims)
        self.net = nn.Sequential(
            nn.Flatten(), *_relu_stack(dims, bias), nn.Linear(dims[-1], out_dim, bias=bias)
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, out_dim)."""
        return self.net(x)

    def forward_and_jacobian_norm(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The output (B, out_dim) and the squared Frobenius norm of each image's Jacobian d out / d x, (B,),
        in closed form; only for one hidden layer.

        With out = W2 relu(W1 x + b1) + b2, J = W2 diag(m) W1 where m is the 0/1 mask of the active hidden
        units, so ||J||_F^2 = m^T ((W2^T W2) * (W1 W1^T)) m: one (hidden x hidden) matrix per call, then a
        quadratic form per image; far cheaper than out_dim backward passes.
        """
        if self.num_hidden_layers != 1:
            raise ValueError(
                f"the closed form needs one hidden layer, this encoder has {self.num_hidden_layers}"
            )
        _, first, _, second = self.net
        pre_activation = first(x.flatten(1))  # (B, hidden)
        out = second(torch.relu(pre_activation))
        mask = (pre_activation > 0).to(pre_activation.dtype)
        gram = (second.weight.T @ second.weight) * (first.weight @ first.weight.T)  # (hidden, hidden)
        return out, ((mask @ gram) * mask).sum(1)


class MLPDecoder(nn.Module):
    """Maps a latent vector through ReLU hidden layers to an image of unbounded values (the caller
    applies the output activation that suits the likelihood); `bias` False: no layer has a bias term."""

    def __init__(
        self, latent_dim: int, hidden_dims: Sequence[int], image_shape: Sequence[int], bias: bool = True
    ) -> None:
        super().__init__()
        dims = [latent_dim, *hidden_dims]
        self.net = nn.Sequential(
            *_relu_stack(dims, bias),
            nn.Linear(dims[-1], prod(image_shape), bias=bias),
            nn.Unflatten(1, tuple(image_shape)),
        )

    def forward(self, z: Tensor) -> Tensor:
        """(B, latent_dim) -> (B, C, H, W)."""
        return self.net(z)
