"""The VAE with a multi-scale SSIM reconstruction term (Snell et al., "Learning to generate images with
perceptual similarity metrics", ICIP 2017; pythae's MSSSIM_VAE)."""

import math
from typing import Any

from torch import Tensor

from ae_lightning.autoencoders.similarity import ms_ssim, ms_ssim_scales
from ae_lightning.autoencoders.vae import VAE
from ae_lightning.errors import ConfigError


class MSSSIMVAE(VAE):
    """VAE whose reconstruction term is the structural dissimilarity of the decoded mean to the image:
    recon = (1 - MS-SSIM(x_hat, x)) * C * H * W.

    MS-SSIM lies in [0, 1]; counting its complement once per pixel keeps the term on the scale of the
    summed squared error, so `beta` weighs the KL as in the VAE (pythae adds 1 - MS-SSIM unscaled: its beta
    equals ours divided by C H W). Not a likelihood: no test NLL. Images only, of at least 8 pixels a side.

    Args:
        ssim_kernel_size: the width in pixels of the Gaussian window (sigma 1.5), odd; at the coarsest scale
            the images must still hold one window: 7 lets 28-pixel images take 3 scales (28, 14, 7), the
            usual 11 only 2.
        ssim_scales: how many scales (1 to 5; None: the most the image size and window allow).
        **kwargs: the arguments of `VAE` (`likelihood` sets only the decoder's output activation).
    """

    def __init__(self, ssim_kernel_size: int = 7, ssim_scales: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if ssim_scales is not None and not 1 <= ssim_scales <= 5:
            raise ConfigError(f"ssim_scales must be 1 to 5 (or None: as many as fit), got {ssim_scales}")
        self.ssim_kernel_size = ssim_kernel_size
        self.ssim_scales = ms_ssim_scales(self.image_shape, ssim_kernel_size, ssim_scales)

    def reconstruction_loss(self, decoder_output: Tensor, x: Tensor) -> Tensor:
        """(1 - MS-SSIM) of each image times its number of pixels, (B,), in float32."""
        similarity = ms_ssim(
            self.output_mean(decoder_output), x, self.value_range, self.ssim_kernel_size, self.ssim_scales
        )
        return (1 - similarity) * math.prod(self.image_shape)

    def reports_likelihood(self) -> bool:
        return False
