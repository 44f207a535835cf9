"""LightningModules, one per autoencoder variant, around the torch models of `ae_lightning.autoencoders`."""

from ae_lightning.models.module import AutoencoderModule
from ae_lightning.models.variants import (
    AE,
    IWAE,
    VAE,
    VQVAE,
    ConditionalVAE,
    ContractiveAE,
    DenoisingAE,
    SparseAE,
)

__all__ = [
    "AE",
    "IWAE",
    "VAE",
    "VQVAE",
    "AutoencoderModule",
    "ConditionalVAE",
    "ContractiveAE",
    "DenoisingAE",
    "SparseAE",
]
