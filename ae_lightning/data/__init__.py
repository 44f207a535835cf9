"""LightningDataModules and the datasets they serve.

The names are imported when first used, so that the parts without Lightning (image_files, idx) load alone:
`cli.py score` reads images with them and needs no Lightning.
"""

from ae_lightning.lazy import lazy_exports

#: exported name -> the module defining it
_MODULES = {
    "AutoencoderDataModule": "ae_lightning.data.contract",
    "CIFAR10DataModule": "ae_lightning.data.cifar",
    "ImageDataModule": "ae_lightning.data.base",
    "ImageFolderDataModule": "ae_lightning.data.folder",
    "ImageTensorDataset": "ae_lightning.data.datasets",
    "MNISTDataModule": "ae_lightning.data.mnist",
    "ManifoldDataModule": "ae_lightning.data.manifold",
    "PointDataset": "ae_lightning.data.manifold",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _MODULES)
