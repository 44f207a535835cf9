"""LightningModules, one per autoencoder variant, on one shared base."""

from ae_lightning.models.ae import AE
from ae_lightning.models.base import AutoencoderBase
from ae_lightning.models.dae import DenoisingAE
from ae_lightning.models.vae import VAE

__all__ = ["AE", "VAE", "AutoencoderBase", "DenoisingAE"]
