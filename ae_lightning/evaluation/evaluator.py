"""What validation and test measure beyond the loss terms, as one component a LightningModule holds."""

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, MeanSquaredError, Metric
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from ae_lightning.autoencoders.base import Autoencoder
from ae_lightning.autoencoders.interface import LogLikelihood
from ae_lightning.batch import Batch
from ae_lightning.evaluation.one_class import DEFAULT_ANOMALY_QUANTILE, OneClassMetrics, ScoreQuantile


class Evaluator(nn.Module):
    """The one-class threshold and metrics, reconstruction quality, the test NLL and a model's own
    validation statistics, over whole sets and all devices (torchmetrics states).

    - One-class (batches with `gt_anomaly`): each validation pass sets `threshold` to the `anomaly_quantile`
      of the anomaly scores of the (normal) validation images, so about (1 - q) of normal data is flagged;
      test reports `auroc`, `aupr` and, with a threshold, `f1` of `score > threshold`.
    - Reconstruction at test: `mse` (per pixel), `psnr` (dB, from the MSE of the whole set) and `ssim`
      (mean over images) of `model.reconstruct(batch)`, in the data's units.
    - `nll` at test, for a model that estimates its likelihood (`LogLikelihood`) in nats.
    - Validation statistics the model declares (`evaluation_metrics`), e.g. a VAE's active units.

    Args:
        model: the autoencoder evaluated (read for its value range, capabilities and statistics).
        anomaly_quantile: the one-class threshold rule.
    """

    def __init__(self, model: Autoencoder, anomaly_quantile: float = DEFAULT_ANOMALY_QUANTILE) -> None:
        super().__init__()
        low, high = model.value_range
        self.val_scores = ScoreQuantile(anomaly_quantile)
        self.one_class = OneClassMetrics()
        self.mse = MeanSquaredError()
        self.psnr = PeakSignalNoiseRatio(data_range=high - low)
        # structural similarity compares image windows: images only
        self.ssim = (
            StructuralSimilarityIndexMeasure(data_range=high - low) if len(model.image_shape) == 3 else None
        )
        # no NaN check (a wait for a GPU at every batch): a NaN likelihood shows as a NaN mean
        self.nll = MeanMetric(nan_strategy="disable")
        self.statistics = nn.ModuleDict(model.evaluation_metrics())
        self.threshold: float | None = None

    @torch.no_grad()
    def validation_batch(self, model: Autoencoder, batch: Batch) -> None:
        """Collects the scores of normal images (one-class data) and the model's statistics."""
        if batch.gt_anomaly is not None:
            self.val_scores.update(model.anomaly_score(batch).float(), keep=~batch.gt_anomaly.bool())
        for name, value in model.evaluation_inputs(batch).items():
            self.statistics[name].update(value)

    def validation_end(self) -> dict[str, Tensor | float]:
        """The threshold of the weights just validated (saved with the next checkpoint) and the model's
        statistics, by name; resets what was collected."""
        results: dict[str, Tensor | float] = {}
        if self.val_scores.update_count > 0:
            self.threshold = self.val_scores.compute().item()
            self.val_scores.reset()
            results["anomaly_threshold"] = self.threshold
        for name, metric in self.statistics.items():
            if metric.update_count == 0:
                continue
            value = metric.compute()
            results |= value if isinstance(value, dict) else {name: value}
            metric.reset()
        return results

    @torch.no_grad()
    def test_batch(self, model: Autoencoder, batch: Batch) -> None:
        """Updates the test metrics with a batch (measured over the whole set by `test_end`)."""
        x = batch.inputs.float()
        reconstruction = model.reconstruct(batch).float()
        self.mse.update(reconstruction, x)
        self.psnr.update(reconstruction, x)
        if self.ssim is not None:
            self.ssim.update(reconstruction, x)
        if isinstance(model, LogLikelihood) and model.reports_likelihood():
            self.nll.update(model.negative_log_likelihood(batch, model.nll_samples))
        if batch.gt_anomaly is not None:
            self.one_class.update(model.anomaly_score(batch).float(), batch.gt_anomaly)

    def test_end(self) -> dict[str, Tensor | float]:
        """What test measured over the whole set (every device's share), by name; resets it. Read at the end
        of the epoch, so that no test batch waits for the device."""
        metrics: dict[str, Metric] = {"mse": self.mse, "psnr": self.psnr, "nll": self.nll}
        if self.ssim is not None:
            metrics["ssim"] = self.ssim
        results: dict[str, Tensor | float] = {}
        for name, metric in metrics.items():
            if metric.update_count > 0:
                results[name] = metric.compute()
            metric.reset()
        if self.one_class.update_count > 0:
            self.one_class.threshold = self.threshold
            results |= self.one_class.compute()
            if self.threshold is not None:
                results["anomaly_threshold"] = self.threshold
        self.one_class.reset()
        return results
