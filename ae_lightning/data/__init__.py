"""LightningDataModules and the datasets they serve.

The names are imported when first used, so that the parts without Lightning (image_files, idx) load alone:
`cli.py score` reads images with them and needs no Lightning.
"""

from importlib import import_module
from typing import Any

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

__all__ = sorted(_MODULES)


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_MODULES[name]), name)


def __dir__() -> list[str]:
    return __all__
