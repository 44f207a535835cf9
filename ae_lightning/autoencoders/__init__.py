"""Autoencoders in plain PyTorch (no Lightning), one per variant, each owning its objective.

Usable in any training loop, and the part an exported model is made of; `ae_lightning.models` trains them
with Lightning.
"""

from ae_lightning.autoencoders.base import AE, Autoencoder
from ae_lightning.autoencoders.contractive import ContractiveAE
from ae_lightning.autoencoders.cvae import ConditionalVAE
from ae_lightning.autoencoders.dae import DenoisingAE
from ae_lightning.autoencoders.interface import (
    Conditional,
    Denoising,
    DiscreteCode,
    GaussianPosterior,
    Generative,
    LogLikelihood,
    Reconstructs,
)
from ae_lightning.autoencoders.iwae import IWAE
from ae_lightning.autoencoders.sparse import SparseAE
from ae_lightning.autoencoders.vae import VAE
from ae_lightning.autoencoders.vqvae import VQVAE

__all__ = [
    "AE",
    "IWAE",
    "VAE",
    "VQVAE",
    "Autoencoder",
    "Conditional",
    "ConditionalVAE",
    "ContractiveAE",
    "Denoising",
    "DenoisingAE",
    "DiscreteCode",
    "GaussianPosterior",
    "Generative",
    "LogLikelihood",
    "Reconstructs",
    "SparseAE",
]
