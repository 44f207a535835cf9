"""Convolutional encoder and decoder for square images with 1 or 3 channels (28x28, 32x32, 64x64, ...)."""

from collections.abc import Sequence

from torch import Tensor, nn


def _check_square(image_shape: Sequence[int]) -> tuple[int, int]:
    """Returns (channels, side) of a (C, H, W) shape, refusing shapes the conv nets cannot take."""
    channels, height, width = image_shape
    if height != width:
        raise ValueError(f"the convolutional backbone takes square images, got {height}x{width}")
    return channels, height


def downsampled_sides(side: int, levels: int) -> list[int]:
    """Side lengths after each stride-2 convolution (kernel 3, padding 1 rounds up): 28 -> [28, 14, 7]."""
    sides = [side]
    for _ in range(levels):
        sides.append((sides[-1] + 1) // 2)
    return sides


class ConvEncoder(nn.Module):
    """Stride-2 convolutions with ReLU (each halves the side), then a linear map to `out_dim` values."""

    def __init__(self, image_shape: Sequence[int], channels: Sequence[int], out_dim: int) -> None:
        super().__init__()
        in_channels, side = _check_square(image_shape)
        layers: list[nn.Module] = []
        for out_channels in channels:
            layers += [nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1), nn.ReLU()]
            in_channels = out_channels
        final_side = downsampled_sides(side, len(channels))[-1]
        self.net = nn.Sequential(
            *layers, nn.Flatten(), nn.Linear(in_channels * final_side * final_side, out_dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, out_dim)."""
        return self.net(x)


class ConvDecoder(nn.Module):
    """Mirror of `ConvEncoder`: a linear map to the smallest feature map, then stride-2 transposed
    convolutions back to the image size; the output is unbounded (the caller applies the activation).

    `channels` runs from the latent side towards the image, e.g. (64, 32) mirrors an encoder of (32, 64).
    """

    def __init__(self, latent_dim: int, channels: Sequence[int], image_shape: Sequence[int]) -> None:
        super().__init__()
        image_channels, side = _check_square(image_shape)
        # the encoder's sides, smallest first: each transposed conv must land exactly on the next one
        sides = downsampled_sides(side, len(channels))[::-1]
        layers: list[nn.Module] = [
            nn.Linear(latent_dim, channels[0] * sides[0] * sides[0]),
            nn.ReLU(),
            nn.Unflatten(1, (channels[0], sides[0], sides[0])),
        ]
        out_channels_per_level = [*channels[1:], image_channels]
        for level, (in_ch, out_ch) in enumerate(zip(channels, out_channels_per_level, strict=True)):
            # a transposed conv (k=3, s=2, p=1) gives 2*side - 1 + output_padding
            output_padding = sides[level + 1] - (2 * sides[level] - 1)
            layers.append(
                nn.ConvTranspose2d(in_ch, out_ch, 3, stride=2, padding=1, output_padding=output_padding)
            )
            if level < len(channels) - 1:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        """(B, latent_dim) -> (B, C, H, W)."""
        return self.net(z)
