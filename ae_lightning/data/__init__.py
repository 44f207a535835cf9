"""LightningDataModules and the datasets they serve."""

from ae_lightning.data.base import ImageDataModule
from ae_lightning.data.cifar import CIFAR10DataModule
from ae_lightning.data.datasets import ImageTensorDataset
from ae_lightning.data.folder import ImageFolderDataModule
from ae_lightning.data.manifold import ManifoldDataModule
from ae_lightning.data.mnist import MNISTDataModule

__all__ = [
    "CIFAR10DataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "ImageTensorDataset",
    "MNISTDataModule",
    "ManifoldDataModule",
]
