"""Networks in plain PyTorch (no Lightning): encoders and decoders the models are built from."""

from collections.abc import Sequence
from typing import Literal

from torch import nn

from ae_lightning.nets.conditional import OneHotConditionedDecoder, OneHotConditionedEncoder
from ae_lightning.nets.conv import ConvDecoder, ConvEncoder
from ae_lightning.nets.mlp import MLPDecoder, MLPEncoder
from ae_lightning.nets.one_hot import one_hot
from ae_lightning.nets.quantizer import Quantized, VectorQuantizer
from ae_lightning.nets.sampling import first_accepted, standard_normal

Backbone = Literal["mlp", "conv"]

#: hidden layer widths (mlp) or channels of the stride-2 convolutions (conv), from the image side
DEFAULT_HIDDEN_DIMS: dict[str, tuple[int, ...]] = {"mlp": (400,), "conv": (32, 64)}


def build_encoder(
    backbone: Backbone,
    image_shape: Sequence[int],
    hidden_dims: Sequence[int],
    out_dim: int,
    bias: bool = True,
) -> nn.Module:
    """Encoder mapping (B, C, H, W) images to (B, out_dim); `hidden_dims` run from the image side; `bias`
    False: no layer has a bias term."""
    if backbone == "mlp":
        return MLPEncoder(image_shape, hidden_dims, out_dim, bias)
    return ConvEncoder(image_shape, hidden_dims, out_dim, bias)


def build_decoder(
    backbone: Backbone,
    latent_dim: int,
    hidden_dims: Sequence[int],
    image_shape: Sequence[int],
    bias: bool = True,
) -> nn.Module:
    """Decoder mirroring `build_encoder` with the same `hidden_dims` (given from the image side); `bias`
    False: no layer has a bias term."""
    mirrored = list(reversed(hidden_dims))
    if backbone == "mlp":
        return MLPDecoder(latent_dim, mirrored, image_shape, bias)
    return ConvDecoder(latent_dim, mirrored, image_shape, bias)


__all__ = [
    "DEFAULT_HIDDEN_DIMS",
    "Backbone",
    "ConvDecoder",
    "ConvEncoder",
    "MLPDecoder",
    "MLPEncoder",
    "OneHotConditionedDecoder",
    "OneHotConditionedEncoder",
    "Quantized",
    "VectorQuantizer",
    "build_decoder",
    "build_encoder",
    "first_accepted",
    "one_hot",
    "standard_normal",
]
