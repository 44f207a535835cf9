"""K optimizer steps per Lightning training step: the fast path for small models, in one place.

Lightning's per-step work (hooks, logging, the progress bar) costs about as much as a small model's step on
a CPU, and makes a GPU wait for the host. With `steps_per_call` K > 1 each training item holds K batches
(`group_batches`, used by the datamodule's sampler) and the module takes K optimizer steps in one call
(`train_steps`, Lightning's manual optimization). The CLI links the model's `steps_per_call` to the
datamodule's (`link_steps_per_call`). Lightning counts one "batch that stepped" per call: this module, and
only this module, sets that private counter (`_batches_that_stepped`) to the optimizer steps taken, so
loggers and `log_every_n_steps` count optimizer steps (tests/test_speed.py,
`test_k_steps_per_call_log_by_optimizer_step`, pins the behaviour).
"""

import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.core.optimizer import do_nothing_closure
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from ae_lightning.autoencoders import OptimizedPart, SeveralOptimizers, take_part_gradients
from ae_lightning.batch import Batch
from ae_lightning.errors import ConfigError

if TYPE_CHECKING:
    # an ae_lightning.models.AutoencoderModule (it holds `model` and `steps_per_call`), not imported: it
    # imports this module
    from lightning.pytorch import LightningModule as AutoencoderModule
    from lightning.pytorch.cli import LightningArgumentParser

#: Lightning's warning, at the start of fit, that compares the calls of an epoch with log_every_n_steps
_CALLS_WARNING = r"The number of training batches \(\d+\) is smaller"


def check_steps_per_call(steps_per_call: int) -> int:
    """Refuses K < 1."""
    if steps_per_call < 1:
        raise ConfigError(f"steps_per_call must be at least 1 optimizer step, got {steps_per_call}")
    return steps_per_call


def link_steps_per_call(parser: "LightningArgumentParser") -> None:
    """The datamodule sizes its training items by the model's K."""
    parser.link_arguments("model.init_args.steps_per_call", "data.init_args.steps_per_call")


def group_batches(batches: Sequence[Tensor], steps_per_call: int) -> Iterator[Tensor | list[Tensor]]:
    """The batches themselves (K = 1), or lists of K of them (the last list may be shorter)."""
    if steps_per_call == 1:
        yield from batches
        return
    for first in range(0, len(batches), steps_per_call):
        yield list(batches[first : first + steps_per_call])


def calls(num_batches: int, steps_per_call: int) -> int:
    """Training items of an epoch of `num_batches` batches."""
    return -(-num_batches // steps_per_call)


def train_steps(module: "AutoencoderModule", batches: list[Batch]) -> Tensor:
    """Up to K training iterations, one per batch, each exactly what one automatic step does (zero the
    gradients, backward, step), or, for a model with several optimizers, one step of each optimizer due
    (`autoencoders.take_part_gradients`); stops at `max_steps`. Logs the means over the batches and returns
    the mean loss (detached: the steps are taken)."""
    trainer, model = module.trainer, module.model
    parts = module.model.checked_parts() if isinstance(model, SeveralOptimizers) else None
    optimizers = module.optimizers()
    sums: dict[str, Tensor] = {}
    count = 0
    first_step = trainer.global_step
    for batch in batches:
        if 0 <= trainer.max_steps <= trainer.global_step:
            break
        model.step = trainer.global_step
        terms = model.loss_terms(batch)
        if parts is None:
            optimizers.zero_grad()
            module.manual_backward(terms["loss"].mean())
            optimizers.step()
        else:
            _step_parts(module, terms, parts, optimizers)
        for name, per_image in terms.items():
            sums[name] = sums.get(name, 0) + per_image.detach().sum()
        count += len(batch)
    means = {f"train/{name}": total / count for name, total in sums.items()}
    # a number made a tensor where the loss is (a fill, not a copy from the host, which waits for a GPU)
    means |= {
        f"train/{name}": value if isinstance(value, Tensor) else torch.full((), value, device=module.device)
        for name, value in model.training_metrics().items()
    }
    for name, mean in means.items():
        # callbacks (a checkpoint monitoring train/loss) see every call's means; the loggers get them by
        # optimizer step, below; the progress bar gets the returned loss
        module.log(name, mean, on_step=True, logger=False, batch_size=count)
    _log_by_optimizer_step(module, first_step, means)
    return means["train/loss"]


def _step_parts(
    module: "AutoencoderModule", terms: dict[str, Tensor], parts: Sequence[OptimizedPart], optimizers: list
) -> None:
    """One iteration of a model with several optimizers: each part due takes its gradient (averaged over
    the processes under DDP, one all-reduce for all of them), then each steps through Lightning (clipping,
    mixed precision). Lightning counts every `optimizer.step()` in `global_step`; the first step of the
    iteration is counted, the others' counting hooks (`_on_before_step`, `_on_after_step`, which the manual
    loop sets) are silenced, so `global_step` counts iterations."""
    by_name = dict(zip((part.name for part in parts), optimizers, strict=True))
    stepping = take_part_gradients(terms, parts, module.trainer.global_step)
    if module.trainer.world_size > 1:
        gradients = [parameter.grad for part in stepping for parameter in part.parameters]
        flat = module.trainer.strategy.reduce(_flatten_dense_tensors(gradients), reduce_op="mean")
        for gradient, mean in zip(gradients, _unflatten_dense_tensors(flat, gradients), strict=True):
            gradient.copy_(mean)
    for position, part in enumerate(stepping):
        optimizer = by_name[part.name]
        if position == 0:
            optimizer.step()
            continue
        counting = optimizer._on_before_step, optimizer._on_after_step
        optimizer._on_before_step = optimizer._on_after_step = do_nothing_closure
        try:
            optimizer.step()
        finally:
            optimizer._on_before_step, optimizer._on_after_step = counting


def _log_by_optimizer_step(module: "AutoencoderModule", first_step: int, means: dict[str, Tensor]) -> None:
    """Keeps the loggers' step axis and `log_every_n_steps` in optimizer steps when a call takes several.

    Lightning keys logger rows (validation's too) by its count of batches that stepped and logs training
    metrics when it is a multiple of `log_every_n_steps`. The count is set to the optimizer steps taken
    (Lightning adds the call's last), and the means of a call that passed a multiple of
    `log_every_n_steps` go to the loggers at the call's last step, as Lightning would log one step.
    """
    trainer = module.trainer
    last_step = trainer.global_step
    trainer.fit_loop.epoch_loop._batches_that_stepped = last_step - 1
    every = trainer.log_every_n_steps
    if not module.loggers or every <= 0 or last_step // every == first_step // every:
        return
    metrics = {name: mean.item() for name, mean in means.items()} | {"epoch": trainer.current_epoch}
    for logger in module.loggers:
        logger.log_metrics(metrics, step=last_step - 1)


def take_gradient_clipping(trainer: Any, module: "AutoencoderModule") -> None:
    """Before a fit with K steps per call: Lightning clips gradients only under automatic optimisation and
    refuses `--trainer.gradient_clip_val` otherwise, so the module takes the trainer's clipping over and
    clips each of its K steps itself (`clip_gradients`); the trainer's setting is cleared."""
    if module.automatic_optimization or not trainer.gradient_clip_val:
        return
    module.gradient_clipping = (float(trainer.gradient_clip_val), trainer.gradient_clip_algorithm or "norm")
    trainer.gradient_clip_val = None


def clip_gradients(module: "AutoencoderModule", optimizer: torch.optim.Optimizer) -> None:
    """Clips the gradients of one of K steps as Lightning clips an automatic step: after they are unscaled
    (16-mixed), before the optimizer steps (called from `on_before_optimizer_step`)."""
    if module.gradient_clipping is not None:
        value, algorithm = module.gradient_clipping
        module.clip_gradients(optimizer, gradient_clip_val=value, gradient_clip_algorithm=algorithm)


def step_schedulers(module: "AutoencoderModule") -> None:
    """At an epoch's end: steps the learning-rate schedulers (one per optimizer that has one) where
    Lightning would (it leaves that to a manually optimised module), a ReduceLROnPlateau one with
    `val/loss`."""
    schedulers = module.lr_schedulers()
    for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
        if scheduler is None:
            continue
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if "val/loss" in module.trainer.callback_metrics:
                scheduler.step(module.trainer.callback_metrics["val/loss"])
        else:
            scheduler.step()


class CallsWarning:
    """Replaces Lightning's "fewer training batches than log_every_n_steps" warning, which counts calls, by
    one that counts optimizer steps: the filter holds from fit's start until training starts, no longer."""

    def __init__(self) -> None:
        self._context: Any = None

    def enter(self) -> None:
        """At fit's start (before Lightning sets up the training data)."""
        self._context = warnings.catch_warnings()
        self._context.__enter__()
        warnings.filterwarnings("ignore", message=_CALLS_WARNING)

    def leave(self, module: "AutoencoderModule", warn: bool = True) -> None:
        """When training starts: drops the filter and warns in optimizer steps (`warn`; not when fit ends
        before training starts)."""
        if self._context is None:
            return
        self._context.__exit__(None, None, None)
        self._context = None
        if not warn:
            return
        trainer = module.trainer
        steps = trainer.num_training_batches * module.steps_per_call
        if trainer.loggers and steps < trainer.log_every_n_steps:
            rank_zero_warn(
                f"an epoch has at most {steps} optimizer steps, fewer than log_every_n_steps "
                f"({trainer.log_every_n_steps}): set --trainer.log_every_n_steps lower to see train/* "
                "within epochs"
            )
