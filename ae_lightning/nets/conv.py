"""Convolutional encoder and decoder for images of any height, width and channel count (28x28 gray,
32x32 or 64x64 RGB, 100x60, 256x256, ...)."""

from collections.abc import Sequence

from torch import Tensor, nn


def downsampled_sides(side: int, levels: int) -> list[int]:
    """Side lengths after each stride-2 convolution (kernel 3, padding 1 rounds up): 28 -> [28, 14, 7]."""
    sides = [side]
    for _ in range(levels):
        sides.append((sides[-1] + 1) // 2)
    return sides


def feature_map_sizes(image_shape: Sequence[int], levels: int) -> list[tuple[int, int]]:
    """(height, width) of the image and after each of `levels` stride-2 convolutions."""
    _, height, width = image_shape
    return list(zip(downsampled_sides(height, levels), downsampled_sides(width, levels), strict=True))


class ConvEncoder(nn.Module):
    """Stride-2 convolutions with ReLU (each halves the side), then a linear map to `out_dim` values; `bias`
    False: no layer has a bias term."""

    def __init__(
        self, image_shape: Sequence[int], channels: Sequence[int], out_dim: int, bias: bool = True
    ) -> None:
        super().__init__()
        in_channels = image_shape[0]
        layers: list[nn.Module] = []
        for out_channels in channels:
            layers += [nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=bias), nn.ReLU()]
            in_channels = out_channels
        height, width = feature_map_sizes(image_shape, len(channels))[-1]
        linear = nn.Linear(in_channels * height * width, out_dim, bias=bias)
        self.net = nn.Sequential(*layers, nn.Flatten(), linear)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, out_dim)."""
        return self.net(x)


class ConvDecoder(nn.Module):
    """Mirror of `ConvEncoder`: a linear map to the smallest feature map, then stride-2 transposed
    convolutions back to the image size; the output is unbounded (the caller applies the activation).

    `channels` runs from the latent side towards the image, e.g. (64, 32) mirrors an encoder of (32, 64);
    `bias` False: no layer has a bias term.
    """

    def __init__(
        self, latent_dim: int, channels: Sequence[int], image_shape: Sequence[int], bias: bool = True
    ) -> None:
        super().__init__()
        image_channels = image_shape[0]
        # the encoder's feature map sizes, smallest first: each transposed conv must land exactly on the next
        sizes = feature_map_sizes(image_shape, len(channels))[::-1]
        layers: list[nn.Module] = [
            nn.Linear(latent_dim, channels[0] * sizes[0][0] * sizes[0][1], bias=bias),
            nn.ReLU(),
            nn.Unflatten(1, (channels[0], *sizes[0])),
        ]
        out_channels_per_level = [*channels[1:], image_channels]
        for level, (in_ch, out_ch) in enumerate(zip(channels, out_channels_per_level, strict=True)):
            # a transposed conv (k=3, s=2, p=1) gives 2*side - 1 + output_padding, per dimension
            output_padding = tuple(
                after - (2 * before - 1) for before, after in zip(sizes[level], sizes[level + 1], strict=True)
            )
            layers.append(
                nn.ConvTranspose2d(
                    in_ch, out_ch, 3, stride=2, padding=1, output_padding=output_padding, bias=bias
                )
            )
            if level < len(channels) - 1:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        """(B, latent_dim) -> (B, C, H, W)."""
        return self.net(z)
