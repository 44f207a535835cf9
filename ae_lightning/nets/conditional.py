"""Encoder and decoder conditioned on a class label given as a one-hot vector (for the conditional VAE)."""

from collections.abc import Sequence
from math import prod

import torch
from torch import Tensor, nn

from ae_lightning.nets.conv import ConvEncoder
from ae_lightning.nets.mlp import MLPEncoder


class OneHotConditionedEncoder(nn.Module):
    """An encoder that sees the image and its one-hot label.

    The MLP takes the label appended to the flattened pixels; the conv net takes it as `num_classes` constant
    extra channels, so every convolution sees it.
    """

    def __init__(
        self,
        backbone: str,
        image_shape: Sequence[int],
        hidden_dims: Sequence[int],
        out_dim: int,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        if backbone == "mlp":
            self.net: nn.Module = MLPEncoder((prod(image_shape) + num_classes,), hidden_dims, out_dim)
        else:
            channels, height, width = image_shape
            self.net = ConvEncoder((channels + num_classes, height, width), hidden_dims, out_dim)

    def forward(self, x: Tensor, one_hot: Tensor) -> Tensor:
        """(B, C, H, W) images and (B, num_classes) labels -> (B, out_dim)."""
        if self.backbone == "mlp":
            return self.net(torch.cat([x.flatten(1), one_hot], dim=1))
        planes = one_hot[:, :, None, None].expand(-1, -1, *x.shape[2:])
        return self.net(torch.cat([x, planes], dim=1))


class OneHotConditionedDecoder(nn.Module):
    """A decoder that takes the code with the one-hot label appended: `decoder` is built for
    latent_dim + num_classes inputs."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.net = decoder

    def forward(self, z: Tensor, one_hot: Tensor) -> Tensor:
        """(B, latent_dim) codes and (B, num_classes) labels -> (B, C, H, W)."""
        return self.net(torch.cat([z, one_hot], dim=1))
