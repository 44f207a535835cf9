"""Autoencoders in plain PyTorch (no Lightning), one per variant, each owning its objective.

Usable in any training loop, and the part an exported model is made of; `ae_lightning.models` trains them
with Lightning.
"""

from ae_lightning.autoencoders.adversarial import AdversarialAE
from ae_lightning.autoencoders.ae import AE
from ae_lightning.autoencoders.base import Autoencoder, LatentModel
from ae_lightning.autoencoders.contractive import ContractiveAE
from ae_lightning.autoencoders.cvae import ConditionalVAE
from ae_lightning.autoencoders.dae import DenoisingAE
from ae_lightning.autoencoders.deep_svdd import DeepSVDD
from ae_lightning.autoencoders.disentangled import BetaTCVAE, DisentangledBetaVAE
from ae_lightning.autoencoders.factor_vae import FactorVAE
from ae_lightning.autoencoders.flow_vae import IAFVAE, PlanarFlowVAE
from ae_lightning.autoencoders.hrqvae import HRQVAE
from ae_lightning.autoencoders.hvae import HVAE
from ae_lightning.autoencoders.interface import (
    Conditional,
    Denoising,
    DiscreteCode,
    GaussianPosterior,
    Generative,
    Localizes,
    LogLikelihood,
    OptimizedPart,
    ReadsDatasetSize,
    Reconstructs,
    SeveralOptimizers,
    take_part_gradients,
)
from ae_lightning.autoencoders.iwae import CIWAE, IWAE, MIWAE
from ae_lightning.autoencoders.memae import MemAE
from ae_lightning.autoencoders.msssim_vae import MSSSIMVAE
from ae_lightning.autoencoders.piwae import PIWAE
from ae_lightning.autoencoders.poincare_vae import PoincareVAE
from ae_lightning.autoencoders.rae import RAE
from ae_lightning.autoencoders.restoration import RestorationAE
from ae_lightning.autoencoders.rhvae import RHVAE
from ae_lightning.autoencoders.sparse import SparseAE
from ae_lightning.autoencoders.svae import SVAE
from ae_lightning.autoencoders.vae import VAE
from ae_lightning.autoencoders.vaegan import VAEGAN
from ae_lightning.autoencoders.vamp import VampVAE
from ae_lightning.autoencoders.vqvae import VQVAE
from ae_lightning.autoencoders.wae import WAE, InfoVAE

__all__ = [
    "AE",
    "CIWAE",
    "HRQVAE",
    "HVAE",
    "IAFVAE",
    "IWAE",
    "MIWAE",
    "MSSSIMVAE",
    "PIWAE",
    "RAE",
    "RHVAE",
    "SVAE",
    "VAE",
    "VAEGAN",
    "VQVAE",
    "WAE",
    "AdversarialAE",
    "Autoencoder",
    "BetaTCVAE",
    "Conditional",
    "ConditionalVAE",
    "ContractiveAE",
    "DeepSVDD",
    "Denoising",
    "DenoisingAE",
    "DiscreteCode",
    "DisentangledBetaVAE",
    "FactorVAE",
    "GaussianPosterior",
    "Generative",
    "InfoVAE",
    "LatentModel",
    "Localizes",
    "LogLikelihood",
    "MemAE",
    "OptimizedPart",
    "PlanarFlowVAE",
    "PoincareVAE",
    "ReadsDatasetSize",
    "Reconstructs",
    "RestorationAE",
    "SeveralOptimizers",
    "SparseAE",
    "VampVAE",
    "take_part_gradients",
]
