"""What a metric of the framework is: a measure of a whole validation or test set, over every device, that
names what it reads and which models it applies to."""

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ae_lightning.autoencoders.base import LatentModel
from ae_lightning.autoencoders.interface import (
    DiscreteCode,
    Generative,
    Localizes,
    LogLikelihood,
    Reconstructs,
)
from ae_lightning.batch import Batch

#: what a metric can read: a field of the `Batch`, or an output of the model computed once per batch
BATCH_FIELDS = ("inputs", "labels", "gt_anomaly", "gt_mask")
MODEL_OUTPUTS = ("reconstruction", "anomaly_score", "anomaly_map", "latent", "codes", "nll", "samples")


class EvaluationMetric(nn.Module, ABC):
    """One measure over a whole set: its state is torchmetrics' (`add_state` with a `dist_reduce_fx`, or a
    torchmetrics `Metric` held as a submodule), so it is the same on every device and over the whole set.

    A subclass says what it reads (`reads`: names of `BATCH_FIELDS` and `MODEL_OUTPUTS`), when it measures
    (`stages`: "val" and/or "test") and which models it applies to (`applies_to`, by their declared
    capabilities); it is updated with what it reads, by name, for every batch that has those fields, and
    `compute` gives its numbers by name (logged as `<stage>/<name>`). The Evaluator computes each model
    output once per batch, however many metrics read it. Adding one: docs/architecture.md.
    """

    reads: tuple[str, ...] = ()
    stages: tuple[str, ...] = ("test",)

    def applies_to(self, model: LatentModel) -> bool:
        """Whether `model` has what this metric reads (by its declared capabilities)."""
        return True

    @abstractmethod
    def update(self, values: dict[str, Tensor]) -> None:
        """Takes one batch's `reads`, by name."""

    @abstractmethod
    def compute(self) -> dict[str, Tensor]:
        """The measures over everything seen (on every device), by name."""

    def prepare(self, data_features: nn.Module | None, device: torch.device) -> None:
        """Takes what the data offers before a test: its feature network (images in [0, 1] -> features), or
        None; `device` is the model's. Most metrics need nothing."""

    def reset(self) -> None:
        """Forgets what was seen (before the next pass)."""
        for child in self.children():
            if hasattr(child, "reset"):
                child.reset()

    @property
    def seen(self) -> bool:
        """Whether any batch updated it since the last reset."""
        return any(getattr(child, "update_count", 0) > 0 for child in self.children())


def model_outputs(model: LatentModel, batch: Batch, names: Sequence[str]) -> dict[str, Tensor]:
    """The batch's fields and the model's outputs named in `names`, each computed once (a missing batch
    field is left out)."""
    values: dict[str, Tensor] = {}
    for name in dict.fromkeys(names):
        if name in BATCH_FIELDS:
            value = getattr(batch, name)
            if value is not None:
                values[name] = value
        elif name == "reconstruction" and isinstance(model, Reconstructs):
            values[name] = model.reconstruct(batch).float()
        elif name == "anomaly_score":
            values[name] = model.anomaly_score(batch).float()
        elif name == "anomaly_map" and isinstance(model, Localizes) and model.localizes():
            values[name] = model.anomaly_map(batch).float()
        elif name == "latent":
            values[name] = model.latent(batch)
        elif name == "codes" and isinstance(model, DiscreteCode):
            values[name] = model.codes(batch.inputs)
        elif name == "nll" and isinstance(model, LogLikelihood):
            values[name] = model.negative_log_likelihood(batch, model.nll_samples)
        elif name == "samples" and isinstance(model, Generative):
            values[name] = model.sample(len(batch)).float()  # as many samples as the batch has images
    return values


@torch.no_grad()
def update_all(metrics: Sequence[EvaluationMetric], model: LatentModel, batch: Batch) -> None:
    """Updates each metric with what it reads of `batch` (a metric reading a field the batch lacks, such as
    `gt_anomaly` outside the one-class protocol, is left out)."""
    # a metric reading a field the batch lacks is left out before any model output is computed for it
    metrics = [
        metric
        for metric in metrics
        if all(getattr(batch, name) is not None for name in metric.reads if name in BATCH_FIELDS)
    ]
    values = model_outputs(model, batch, [name for metric in metrics for name in metric.reads])
    for metric in metrics:
        if all(name in values for name in metric.reads):
            metric.update({name: values[name] for name in metric.reads})
