"""LightningDataModules and the datasets they serve."""

from ae_lightning.data.datasets import ImageTensorDataset
from ae_lightning.data.manifold import ManifoldDataModule
from ae_lightning.data.mnist import MNISTDataModule

__all__ = ["ImageTensorDataset", "MNISTDataModule", "ManifoldDataModule"]
