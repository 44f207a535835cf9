"""What validation and test measure beyond the loss terms, as one component a LightningModule holds."""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ae_lightning.autoencoders.base import LatentModel
from ae_lightning.autoencoders.interface import Localizes
from ae_lightning.batch import Batch
from ae_lightning.evaluation.maps import Localisation, MapCalibration, PixelCalibration
from ae_lightning.evaluation.metric import EvaluationMetric, update_all
from ae_lightning.evaluation.one_class import DEFAULT_ANOMALY_QUANTILE, ScoreQuantile
from ae_lightning.evaluation.statistics import OneClass, default_metrics


class Evaluator(nn.Module):
    """The one-class threshold and a set of metrics (`EvaluationMetric`s) over whole validation and test
    sets, on all devices.

    - One-class (batches with `gt_anomaly`): each validation pass sets `threshold` to the `anomaly_quantile`
      of the anomaly scores of the (normal) validation images, so about (1 - q) of normal data is flagged;
      the `OneClass` metric then reports `f1` of `score > threshold` at test. A model that localises
      (`Localizes`) has its maps calibrated on the same images (`map_calibration`: their range, and the
      same quantile of their pixels as the pixel threshold), which `Localisation` uses at test.
    - The metrics: by default those that apply to the model's declared capabilities (`default_metrics`:
      reconstruction quality, the NLL, the one-class measures, active units, codebook usage), plus
      `metrics`; each is updated at the stages it names, with what it reads, and read at the epoch's end.

    Args:
        model: the autoencoder evaluated (read for its value range, capabilities and code size).
        anomaly_quantile: the one-class threshold rule.
        metrics: further metrics, besides the defaults (those that do not apply to the model are left out; one
            of a default's class replaces that default).
    """

    def __init__(
        self,
        model: LatentModel,
        anomaly_quantile: float = DEFAULT_ANOMALY_QUANTILE,
        metrics: Sequence[EvaluationMetric] = (),
    ) -> None:
        super().__init__()
        self.val_scores = ScoreQuantile(anomaly_quantile)
        given = [metric for metric in metrics if metric.applies_to(model)]
        # a metric given replaces the default of its class (e.g. Generation with a feature network of its own)
        defaults = [
            metric for metric in default_metrics(model) if type(metric) not in {type(m) for m in given}
        ]
        self.metrics = nn.ModuleList([*defaults, *given])
        self.threshold: float | None = None
        self.pixel_calibration = PixelCalibration(anomaly_quantile)
        #: the range and pixel threshold of the normal validation maps (saved with the next checkpoint)
        self.map_calibration: MapCalibration | None = None

    def _at(self, stage: str) -> list[EvaluationMetric]:
        return [metric for metric in self.metrics if stage in metric.stages]

    @torch.no_grad()
    def validation_batch(self, model: LatentModel, batch: Batch) -> None:
        """Collects the scores of normal images (one-class data) and updates the validation metrics."""
        if batch.gt_anomaly is not None:
            normal = ~batch.gt_anomaly.bool()
            self.val_scores.update(model.anomaly_score(batch).float(), keep=normal)
            if isinstance(model, Localizes) and model.localizes():
                self.pixel_calibration.update(model.anomaly_map(batch).float(), normal)
        update_all(self._at("val"), model, batch)

    def validation_end(self) -> dict[str, Tensor | float]:
        """The threshold of the weights just validated (saved with the next checkpoint) and the validation
        metrics, by name; resets what was collected."""
        results: dict[str, Tensor | float] = {}
        if self.val_scores.update_count > 0:
            self.threshold = self.val_scores.compute().item()
            self.val_scores.reset()
            results["anomaly_threshold"] = self.threshold
        if self.pixel_calibration.update_count > 0:
            self.map_calibration = self.pixel_calibration.calibration()
            self.pixel_calibration.reset()
            results["pixel_threshold"] = self.map_calibration.pixel_threshold
        return results | self._read(self._at("val"))

    def prepare(
        self, data_features: nn.Module | None, device: torch.device, test_pixels: int | None = None
    ) -> None:
        """Hands every metric what the data offers before a test (its feature network, or None), and the
        model's device (moved there before the first batch, not in one); the localisation metrics take the
        map calibration and `test_pixels`, the pixels of the whole test set (None: not known)."""
        for metric in self.metrics:
            metric.prepare(data_features, device)
            if isinstance(metric, Localisation):
                metric.calibrate(self.map_calibration, test_pixels, device)

    @torch.no_grad()
    def test_batch(self, model: LatentModel, batch: Batch) -> None:
        """Updates the test metrics with a batch (measured over the whole set by `test_end`)."""
        update_all(self._at("test"), model, batch)

    def test_end(self) -> dict[str, Tensor | float]:
        """What test measured over the whole set (every device's share), by name; resets it. Read at the end
        of the epoch, so that no test batch waits for the device."""
        for metric in self.metrics:
            if isinstance(metric, OneClass):
                metric.measures.threshold = self.threshold
        results = self._read(self._at("test"))
        if "auroc" in results and self.threshold is not None:
            results["anomaly_threshold"] = self.threshold
        if "pixel_f1" in results:
            results["pixel_threshold"] = self.map_calibration.pixel_threshold
        return results

    @staticmethod
    def _read(metrics: list[EvaluationMetric]) -> dict[str, Tensor | float]:
        results: dict[str, Tensor | float] = {}
        for metric in metrics:
            if metric.seen:
                results |= metric.compute()
            metric.reset()
        return results
