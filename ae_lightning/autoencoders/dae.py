"""The denoising autoencoder (Vincent et al., 2008)."""

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ae_lightning.autoencoders.base import Autoencoder
from ae_lightning.autoencoders.interface import Denoising
from ae_lightning.batch import Batch
from ae_lightning.errors import ConfigError

#: evaluation inputs are corrupted with this seed, so their numbers compare across epochs
EVAL_CORRUPTION_SEED = 0


class DenoisingAE(Autoencoder, Denoising):
    """Autoencoder trained to reconstruct the clean image from a corrupted one.

    The corruptions are applied in this order, each where its argument is above zero: shifting, masking,
    salt-and-pepper, Gaussian noise. In evaluation mode the loss terms are those of clean inputs (`loss`,
    `recon`) and of inputs corrupted with a fixed seed (`recon_corrupted`, the seed restarted by
    `start_evaluation`).

    Args:
        noise_std: standard deviation of additive Gaussian noise, in data units.
        mask_prob: probability that a pixel is set to the bottom of the value range (black).
        salt_pepper_prob: probability that a pixel is set to the bottom or the top of the range (half each).
        shift_pixels: the largest translation of an input, in pixels: each image is moved by a random
            whole number of pixels in [-shift_pixels, shift_pixels] along each axis (the uncovered border
            filled with the bottom of the range), while the target stays where it was. The codes then learn
            to ignore where a digit sits, which makes them more linearly separable.
        **kwargs: the arguments of `Autoencoder`.
    """

    def __init__(
        self,
        noise_std: float = 0.3,
        mask_prob: float = 0.0,
        salt_pepper_prob: float = 0.0,
        shift_pixels: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if noise_std < 0:
            raise ConfigError(f"noise_std must be >= 0 (a standard deviation), got {noise_std}")
        for name, prob in (("mask_prob", mask_prob), ("salt_pepper_prob", salt_pepper_prob)):
            if not 0 <= prob < 1:
                raise ConfigError(f"{name} must be a probability in [0, 1), got {prob}")
        if shift_pixels and len(self.image_shape) != 3:
            raise ConfigError(
                "shift_pixels moves images: vector data take noise_std, mask_prob or salt_pepper_prob"
            )
        if len(self.image_shape) == 3 and not 0 <= shift_pixels < min(self.image_shape[1:]):
            raise ConfigError(
                f"shift_pixels must be a number of pixels in [0, {min(self.image_shape[1:])}) for images of "
                f"{self.image_shape[1]}x{self.image_shape[2]}, got {shift_pixels}"
            )
        if noise_std == mask_prob == salt_pepper_prob == shift_pixels == 0:
            raise ConfigError(
                "DenoisingAE needs a corruption: set noise_std, mask_prob, salt_pepper_prob or shift_pixels "
                "above 0 (without one it is a plain AE)"
            )
        self.noise_std = noise_std
        self.mask_prob = mask_prob
        self.salt_pepper_prob = salt_pepper_prob
        self.shift_pixels = shift_pixels
        self._eval_generator: torch.Generator | None = None

    def corrupt(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        low, high = self.value_range

        def uniform() -> Tensor:
            return torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)

        if self.shift_pixels > 0:
            x = shift(x, self.shift_pixels, low, generator)
        if self.mask_prob > 0:
            x = torch.where(uniform() < self.mask_prob, low, x)
        if self.salt_pepper_prob > 0:
            u = uniform()
            x = torch.where(
                u < self.salt_pepper_prob / 2, low, torch.where(u < self.salt_pepper_prob, high, x)
            )
        if self.noise_std > 0:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + self.noise_std * noise
        return x

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        x = batch.inputs
        if self.training:
            recon = self.reconstruction_error(self.corrupt(x), x)
            return {"loss": recon, "recon": recon}
        if self._eval_generator is None or self._eval_generator.device != x.device:
            self.start_evaluation(x.device)
        clean = self.reconstruction_error(x, x)
        corrupted = self.reconstruction_error(self.corrupt(x, self._eval_generator), x)
        return {"loss": clean, "recon": clean, "recon_corrupted": corrupted}

    def start_evaluation(self, device: torch.device | None = None) -> None:
        device = self.device if device is None else device
        self._eval_generator = torch.Generator(device=device).manual_seed(EVAL_CORRUPTION_SEED)


def shift(x: Tensor, max_shift: int, fill: float, generator: torch.Generator | None = None) -> Tensor:
    """`x` (B, C, H, W) with each image moved by its own random (dy, dx), each in [-max_shift, max_shift];
    the pixels moved in from outside are `fill`."""
    size, _, height, width = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=fill)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, size, 1), generator=generator, device=x.device)
    rows = (dy + torch.arange(height, device=x.device))[:, :, None]  # (B, H, 1): the source rows
    cols = (dx + torch.arange(width, device=x.device))[:, None, :]  # (B, 1, W)
    images = torch.arange(size, device=x.device)[:, None, None]
    return padded[images, :, rows, cols].permute(0, 3, 1, 2)  # indexing puts the channels last
