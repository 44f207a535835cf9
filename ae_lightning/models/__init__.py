"""LightningModules, one per autoencoder variant, on one shared base."""

from ae_lightning.models.ae import AE
from ae_lightning.models.base import AutoencoderBase
from ae_lightning.models.contractive import ContractiveAE
from ae_lightning.models.cvae import ConditionalVAE
from ae_lightning.models.dae import DenoisingAE
from ae_lightning.models.iwae import IWAE
from ae_lightning.models.sparse import SparseAE
from ae_lightning.models.vae import VAE
from ae_lightning.models.vqvae import VQVAE

__all__ = [
    "AE",
    "IWAE",
    "VAE",
    "VQVAE",
    "AutoencoderBase",
    "ConditionalVAE",
    "ContractiveAE",
    "DenoisingAE",
    "SparseAE",
]
