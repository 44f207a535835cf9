"""The plain (undercomplete) autoencoder."""

import math
from typing import Any

from ae_lightning.autoencoders.base import Autoencoder
from ae_lightning.errors import ConfigError


class AE(Autoencoder):
    """Undercomplete autoencoder: a code smaller than the image, so the identity map is out of reach.

    Takes the arguments of `Autoencoder`.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        input_dim = math.prod(self.image_shape)
        if self.latent_dim >= input_dim:
            raise ConfigError(
                f"AE needs latent_dim < the input size {input_dim} ({'x'.join(map(str, self.image_shape))}), "
                f"got {self.latent_dim}: a code as large as the input lets the model learn the identity map. "
                "Use a smaller latent_dim, or DenoisingAE / VAE, whose objectives rule the identity out."
            )
