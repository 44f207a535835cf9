"""Fully connected encoder and decoder for images of any shape."""

from collections.abc import Sequence
from itertools import pairwise
from math import prod

from torch import Tensor, nn


def _relu_stack(dims: Sequence[int]) -> list[nn.Module]:
    """Linear layers between consecutive `dims`, each followed by a ReLU."""
    layers: list[nn.Module] = []
    for in_dim, out_dim in pairwise(dims):
        layers += [nn.Linear(in_dim, out_dim), nn.ReLU()]
    return layers


class MLPEncoder(nn.Module):
    """Flattens an image and maps it through ReLU hidden layers to a vector of `out_dim` values."""

    def __init__(self, image_shape: Sequence[int], hidden_dims: Sequence[int], out_dim: int) -> None:
        super().__init__()
        dims = [prod(image_shape), *hidden_dims]
        self.net = nn.Sequential(nn.Flatten(), *_relu_stack(dims), nn.Linear(dims[-1], out_dim))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, out_dim)."""
        return self.net(x)


class MLPDecoder(nn.Module):
    """Maps a latent vector through ReLU hidden layers to an image of unbounded values (the caller
    applies the output activation that suits the likelihood)."""

    def __init__(self, latent_dim: int, hidden_dims: Sequence[int], image_shape: Sequence[int]) -> None:
        super().__init__()
        dims = [latent_dim, *hidden_dims]
        self.net = nn.Sequential(
            *_relu_stack(dims),
            nn.Linear(dims[-1], prod(image_shape)),
            nn.Unflatten(1, tuple(image_shape)),
        )

    def forward(self, z: Tensor) -> Tensor:
        """(B, latent_dim) -> (B, C, H, W)."""
        return self.net(z)
