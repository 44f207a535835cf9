"""Every variant the package exports, discovered: a new variant is tested the day it is added."""

import typing

import ae_lightning.models
from ae_lightning.autoencoders import Autoencoder
from ae_lightning.models import AutoencoderModule


def modules() -> list[type[AutoencoderModule]]:
    """Every LightningModule variant `ae_lightning.models` exports."""
    exported = [getattr(ae_lightning.models, name) for name in ae_lightning.models.__all__]
    return [
        cls
        for cls in exported
        if isinstance(cls, type) and issubclass(cls, AutoencoderModule) and cls is not AutoencoderModule
    ]


def autoencoder_class(module: type[AutoencoderModule]) -> type[Autoencoder]:
    """The torch model a module builds (the return type it declares for `build_autoencoder`)."""
    return typing.get_type_hints(module.build_autoencoder)["return"]


#: settings besides a variant's defaults that make it small or reach more of its code (a variant without an
#: entry is tested with its defaults); a second VAE case: the beta-VAE with a warm-up
SETTINGS: dict[str, dict] = {
    "DenoisingAE": {"noise_std": 0.2, "mask_prob": 0.1, "salt_pepper_prob": 0.05, "shift_pixels": 2},
    "SparseAE": {"sparsity_penalty": "kl", "sparsity_weight": 0.5, "sparsity_target": 0.1},
    "IWAE": {"num_samples": 3},
    "VQVAE": {"codebook_size": 16, "code_dim": 2, "ema_decay": 0.9, "dead_code_threshold": 0.05},
}
EXTRA_CASES: list[tuple[str, dict]] = [("VAE", {"beta": 4.0, "kl_warmup_steps": 10})]

#: (module class, settings) of every variant, and their test ids
CASES = [(cls, SETTINGS.get(cls.__name__, {})) for cls in modules()] + [
    (getattr(ae_lightning.models, name), extra) for name, extra in EXTRA_CASES
]
IDS = [cls.__name__ + ("-beta" if "kl_warmup_steps" in extra else "") for cls, extra in CASES]
#: the same, as torch models
TORCH_CASES = [(autoencoder_class(cls), extra) for cls, extra in CASES]
