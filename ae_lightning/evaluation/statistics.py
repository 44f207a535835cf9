"""The default metrics: reconstruction quality, the test NLL, the one-class measures, and the statistics of a
model's code (active units, codebook usage)."""

import torch
from torch import Tensor
from torchmetrics import MeanMetric, MeanSquaredError, Metric
from torchmetrics.image import StructuralSimilarityIndexMeasure

from ae_lightning.autoencoders.base import LatentModel
from ae_lightning.autoencoders.interface import DiscreteCode, GaussianPosterior, LogLikelihood, Reconstructs
from ae_lightning.evaluation.generation import Generation
from ae_lightning.evaluation.maps import Localisation
from ae_lightning.evaluation.metric import EvaluationMetric
from ae_lightning.evaluation.one_class import OneClassMetrics
from ae_lightning.nets import one_hot
from ae_lightning.nets.quantizer import usage_statistics

#: a latent unit is active when its posterior mean varies across the data by more than this (Burda et al.)
ACTIVE_UNIT_THRESHOLD = 0.01


class Reconstruction(EvaluationMetric):
    """`mse` (per pixel), `psnr` (dB, from the MSE of the whole set) and, for images, `ssim` (mean over
    images) of the reconstructions, in the data's units."""

    reads = ("inputs", "reconstruction")

    def __init__(self, value_range: tuple[float, float] = (0.0, 1.0), images: bool = True) -> None:
        super().__init__()
        low, high = value_range
        self.data_range = high - low
        self.mse = MeanSquaredError()
        self.ssim = StructuralSimilarityIndexMeasure(data_range=high - low) if images else None

    def applies_to(self, model: LatentModel) -> bool:
        return isinstance(model, Reconstructs)

    def update(self, values: dict[str, Tensor]) -> None:
        x, reconstruction = values["inputs"].float(), values["reconstruction"]
        for metric in (self.mse, self.ssim):
            if metric is not None:
                metric.update(reconstruction, x)

    def compute(self) -> dict[str, Tensor]:
        mse = self.mse.compute()
        # PSNR of the whole set from its MSE (torchmetrics' PSNR copies a count to the GPU at every update)
        results = {"mse": mse, "psnr": 10 * torch.log10(self.data_range**2 / mse)}
        return results | ({"ssim": self.ssim.compute()} if self.ssim is not None else {})


class NegativeLogLikelihood(EvaluationMetric):
    """`nll`: the mean -log p(x) in nats, by the model's importance-sampling estimate (a model that reports
    its likelihood, `LogLikelihood.reports_likelihood`)."""

    reads = ("nll",)

    def __init__(self) -> None:
        super().__init__()
        # no NaN check (a wait for a GPU at every batch): a NaN likelihood shows as a NaN mean
        self.mean = MeanMetric(nan_strategy="disable")

    def applies_to(self, model: LatentModel) -> bool:
        return isinstance(model, LogLikelihood) and model.reports_likelihood()

    def update(self, values: dict[str, Tensor]) -> None:
        self.mean.update(values["nll"])

    def compute(self) -> dict[str, Tensor]:
        return {"nll": self.mean.compute()}


class OneClass(EvaluationMetric):
    """`auroc`, `aupr` and, at the threshold chosen on validation, `f1` of the anomaly scores against the true
    one-class labels (batches of the one-class protocol)."""

    reads = ("anomaly_score", "gt_anomaly")

    def __init__(self) -> None:
        super().__init__()
        self.measures = OneClassMetrics()

    def update(self, values: dict[str, Tensor]) -> None:
        self.measures.update(values["anomaly_score"], values["gt_anomaly"])

    def compute(self) -> dict[str, Tensor]:
        return self.measures.compute()


class ActiveUnitCount(Metric):
    """Number of latent units whose posterior mean varies across the data: Var_x(E_q(z|x)[z_u]) > threshold.

    `update` takes the posterior means (B, latent_dim) of a batch; the sums it keeps are added across
    devices before `compute`, so the count is that of the whole data set.
    """

    full_state_update = False

    def __init__(self, latent_dim: int, threshold: float = ACTIVE_UNIT_THRESHOLD) -> None:
        super().__init__()
        self.threshold = threshold
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(latent_dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total_sq", torch.zeros(latent_dim, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, means: Tensor) -> None:
        means = means.detach().double()
        self.count += means.shape[0]
        self.total += means.sum(0)
        self.total_sq += means.square().sum(0)

    def variances(self) -> Tensor:
        """Variance of each unit's posterior mean over the data seen, (latent_dim,)."""
        mean = self.total / self.count
        return (self.total_sq / self.count - mean.square()).clamp(min=0)

    def compute(self) -> Tensor:
        return (self.variances() > self.threshold).sum().float()


class ActiveUnits(EvaluationMetric):
    """`active_units` at validation: latent units whose posterior mean varies across the data (a model with
    a Gaussian posterior)."""

    reads = ("latent",)
    stages = ("val",)

    def __init__(self, latent_dim: int, threshold: float = ACTIVE_UNIT_THRESHOLD) -> None:
        super().__init__()
        self.count = ActiveUnitCount(latent_dim, threshold)

    def applies_to(self, model: LatentModel) -> bool:
        return isinstance(model, GaussianPosterior)

    def update(self, values: dict[str, Tensor]) -> None:
        self.count.update(values["latent"])

    def compute(self) -> dict[str, Tensor]:
        return {"active_units": self.count.compute()}


class CodeCounts(Metric):
    """How often each codebook entry is chosen; `compute` gives perplexity and the fraction of codes used."""

    full_state_update = False

    def __init__(self, codebook_size: int) -> None:
        super().__init__()
        self.add_state("counts", torch.zeros(codebook_size, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, indices: Tensor) -> None:
        """`indices`: chosen codes, any shape."""
        # not bincount, which learns the largest index on the host (a wait for a GPU at every batch)
        self.counts += one_hot(indices.flatten(), self.counts.numel(), torch.float64).sum(0)

    def compute(self) -> dict[str, Tensor]:
        return usage_statistics(self.counts)


class CodeUsage(EvaluationMetric):
    """`perplexity` and `codes_used` of the codebook at validation (a model with a discrete code)."""

    reads = ("codes",)
    stages = ("val",)

    def __init__(self, codebook_size: int) -> None:
        super().__init__()
        self.counts = CodeCounts(codebook_size)

    def applies_to(self, model: LatentModel) -> bool:
        return isinstance(model, DiscreteCode)

    def update(self, values: dict[str, Tensor]) -> None:
        self.counts.update(values["codes"])

    def compute(self) -> dict[str, Tensor]:
        return self.counts.compute()


def default_metrics(model: LatentModel) -> list[EvaluationMetric]:
    """What applies to `model`, by its declared capabilities: reconstruction quality, the NLL, the one-class
    measures (used where batches carry `gt_anomaly`), the localisation measures (where they carry `gt_mask`),
    the samples' FID, active units, codebook usage."""
    candidates: list[EvaluationMetric] = [
        Reconstruction(model.value_range, images=len(model.image_shape) == 3),
        NegativeLogLikelihood(),
        OneClass(),
        Localisation(),
        Generation(model.value_range),
    ]
    if isinstance(model, GaussianPosterior):
        candidates.append(ActiveUnits(model.latent_dim))
    if isinstance(model, DiscreteCode):
        candidates.append(CodeUsage(model.codebook_size))
    return [metric for metric in candidates if metric.applies_to(model)]
