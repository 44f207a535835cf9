"""The optimizers and learning-rate schedulers of a module: one for most models, one per declared part for a
model that trains with several (`autoencoders.SeveralOptimizers`)."""

from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from jsonargparse import Namespace
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.plugins import MixedPrecision
from lightning.pytorch.utilities import rank_zero_warn

from ae_lightning.autoencoders import OptimizedPart, SeveralOptimizers
from ae_lightning.errors import ConfigError
from ae_lightning.lazy import import_object

if TYPE_CHECKING:
    from ae_lightning.models.module import AutoencoderModule

#: the optimizer of every model unless its config says otherwise: Adam, lr 1e-3, fused (torch's one-kernel
#: step for all parameters, the fastest for these models on a GPU and a CPU)
DEFAULT_OPTIMIZER = Namespace(class_path="torch.optim.Adam", init_args=Namespace(lr=0.001, fused=True))


def optimizer_callable(optimizer: OptimizerCallable | Namespace) -> OptimizerCallable:
    """The optimizer as a callable of the parameters: the CLI gives one; a module built in Python with the
    default gets `DEFAULT_OPTIMIZER`'s class and arguments."""
    if not isinstance(optimizer, Namespace):
        return optimizer
    return partial(import_object(optimizer.class_path), **dict(optimizer.get("init_args") or {}))


def parts_of(model: torch.nn.Module) -> tuple[OptimizedPart, ...] | None:
    """The parts a model that trains with several optimizers declares (checked), or None."""
    return model.checked_parts() if isinstance(model, SeveralOptimizers) else None


def check_part_names(model: torch.nn.Module, per_part: dict[str, Any], flag: str) -> None:
    """Refuses `--model.<flag>` entries that name no optimizer of the model, or a model with one optimizer."""
    if not per_part:
        return
    parts = parts_of(model)
    if parts is None:
        raise ConfigError(
            f"{type(model).__name__} trains with one optimizer: set --model.{flag.rstrip('s')}, "
            f"not --model.{flag}"
        )
    names = [part.name for part in parts]
    unknown = sorted(set(per_part) - set(names))
    if unknown:
        raise ConfigError(
            f"--model.{flag} names {unknown}, but {type(model).__name__}'s optimizers are {names}: "
            "use those names"
        )


def check_precision(trainer: Any, model: torch.nn.Module) -> None:
    """Refuses 16-mixed (a GradScaler) for a model with several optimizers: Lightning updates the one loss
    scale after each optimizer's step, so the later optimizers' gradients would be unscaled by another."""
    plugin = trainer.precision_plugin
    scaled = isinstance(plugin, MixedPrecision) and plugin.scaler is not None
    if isinstance(model, SeveralOptimizers) and scaled:
        raise ConfigError(
            f"{type(model).__name__} trains with several optimizers, which 16-mixed's one loss scale (a "
            "GradScaler) cannot serve (it changes after each optimizer's step): use --trainer.precision "
            "bf16-mixed or 32"
        )


def configure(module: "AutoencoderModule") -> Any:
    """What `configure_optimizers` returns: the optimizer (and its scheduler), or one per part in its order.

    With K steps per call or several optimizers, the module steps the schedulers itself
    (`multistep.step_schedulers`), a plateau one on `val/loss`; Lightning steps an automatic one."""
    parts = parts_of(module.model)
    if parts is None:
        groups: list[tuple[Iterable[torch.nn.Parameter], OptimizerCallable, LRSchedulerCallable | None]]
        groups = [(module.parameters(), module.optimizer, module.lr_scheduler)]
    else:
        groups = [
            (
                part.parameters,
                module.part_optimizers.get(part.name, module.optimizer),
                module.part_lr_schedulers.get(part.name, module.lr_scheduler),
            )
            for part in parts
        ]
    configured = []
    for parameters, make_optimizer, make_scheduler in groups:
        parameters = list(parameters)
        optimizer = make_optimizer(parameters)
        if _clips_under_mixed_precision(module) and optimizer.defaults.get("fused"):
            # Lightning refuses to clip in mixed precision with an optimizer whose fused step unscales the
            # gradients itself (16-mixed: clipping would see them scaled), bf16 included
            rank_zero_warn(
                f"gradient clipping in {module.trainer.precision} precision: {type(optimizer).__name__} "
                "with fused=False, as Lightning clips only an optimizer that is not fused there"
            )
            optimizer = type(optimizer)(parameters, **{**optimizer.defaults, "fused": False})
        if make_scheduler is None:
            configured.append({"optimizer": optimizer})
            continue
        scheduler = {"scheduler": make_scheduler(optimizer)}
        if module.automatic_optimization:
            scheduler["monitor"] = "val/loss"
        configured.append({"optimizer": optimizer, "lr_scheduler": scheduler})
    if len(configured) == 1:
        only = configured[0]
        return only if "lr_scheduler" in only else only["optimizer"]
    return configured


def _clips_under_mixed_precision(module: "AutoencoderModule") -> bool:
    """Whether the trainer the module is attached to clips gradients in mixed precision."""
    try:
        trainer = module.trainer
    except RuntimeError:  # not attached (the CLI's check of the optimizer's arguments)
        return False
    clips = bool(trainer.gradient_clip_val) or module.gradient_clipping is not None
    return clips and "mixed" in str(trainer.precision)
