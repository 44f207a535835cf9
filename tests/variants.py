"""Every variant the package exports, discovered: a new variant is tested the day it is added."""

import typing

import ae_lightning.models
from ae_lightning.autoencoders import LatentModel
from ae_lightning.models import AutoencoderModule


def modules() -> list[type[AutoencoderModule]]:
    """Every LightningModule variant `ae_lightning.models` exports."""
    exported = [getattr(ae_lightning.models, name) for name in ae_lightning.models.__all__]
    return [
        cls
        for cls in exported
        if isinstance(cls, type) and issubclass(cls, AutoencoderModule) and cls is not AutoencoderModule
    ]


def autoencoder_class(module: type[AutoencoderModule]) -> type[LatentModel]:
    """The torch model a module builds (the return type it declares for `build_autoencoder`)."""
    return typing.get_type_hints(module.build_autoencoder)["return"]


#: settings besides a variant's defaults that make it small or reach more of its code (a variant without an
#: entry is tested with its defaults)
SETTINGS: dict[str, dict] = {
    "DenoisingAE": {"noise_std": 0.2, "mask_prob": 0.1, "salt_pepper_prob": 0.05, "shift_pixels": 2},
    "SparseAE": {"sparsity_penalty": "kl", "sparsity_weight": 0.5, "sparsity_target": 0.1},
    "IWAE": {"num_samples": 3},
    "VQVAE": {"codebook_size": 16, "code_dim": 2, "ema_decay": 0.9, "dead_code_threshold": 0.05},
    "MIWAE": {"num_samples": 2, "num_estimates": 2},
    "CIWAE": {"num_samples": 3},
    "VampVAE": {"num_components": 6},
    "DisentangledBetaVAE": {"beta": 4.0, "capacity": 5.0, "capacity_steps": 10},
    "BetaTCVAE": {"dataset_size": 1000},
    "RAE": {"regularization": "gp", "reg_weight": 1e-3},
    "WAE": {"kernel": "rbf"},
    "HVAE": {"n_leapfrog": 2, "eps_lf": 0.01, "beta_zero": 0.5, "learn_beta_zero": True},
    "PlanarFlowVAE": {"flows": ["planar", "radial"], "num_flows": 2},
    "IAFVAE": {"num_flows": 2, "made_hidden_dims": [16]},
    "SVAE": {"beta": 2.0, "kl_warmup_steps": 10, "nll_samples": 20},
    "HRQVAE": {"codebook_size": 16, "code_dim": 2, "kl_weight": 0.1, "dead_code_threshold": 0.05},
    "PoincareVAE": {"posterior": "riemannian", "curvature": 0.7, "kl_warmup_steps": 10, "nll_samples": 20},
    "FactorVAE": {"discriminator_dims": [32]},
    "AdversarialAE": {"discriminator_dims": [32]},
    "PIWAE": {"num_samples": 2, "num_estimates": 2},
    "VAEGAN": {"feature_size": 16, "gamma": 0.5},
    "RHVAE": {"n_lf": 1, "beta_zero": 0.5, "metric_hidden_dims": [16], "num_centroids": 32},
    "MemAE": {"memory_size": 64, "shrink_threshold": 0.015, "entropy_weight": 0.05},
    "RestorationAE": {"erasures": ["rotate", "flip", "mask"], "score_smoothing": 1.0},
    "DeepSVDD": {"objective": "soft-boundary", "nu": 0.2, "warmup_steps": 1},
}
#: further cases of a variant: (variant, test id suffix, settings)
EXTRA_CASES: list[tuple[str, str, dict]] = [
    ("VAE", "beta", {"beta": 4.0, "kl_warmup_steps": 10}),
    ("RAE", "l2", {"regularization": "l2"}),
    ("VAEGAN", "minimax", {"feature_size": 16, "generator_loss": "minimax"}),
    ("PoincareVAE", "wrapped", {"posterior": "wrapped", "prior_std": 0.8, "beta": 2.0, "nll_samples": 20}),
]

#: (module class, settings) of every variant, and their test ids
CASES = [(cls, SETTINGS.get(cls.__name__, {})) for cls in modules()] + [
    (getattr(ae_lightning.models, name), extra) for name, _, extra in EXTRA_CASES
]
IDS = [cls.__name__ for cls in modules()] + [f"{name}-{suffix}" for name, suffix, _ in EXTRA_CASES]
#: the same, as torch models
TORCH_CASES = [(autoencoder_class(cls), extra) for cls, extra in CASES]
