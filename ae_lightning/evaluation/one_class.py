"""One-class anomaly detection metrics: AUROC, AUPR, and F1 at a threshold chosen on normal data only."""

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision, BinaryF1Score

from ae_lightning.errors import ConfigError

#: default rule: the threshold is this quantile of the validation scores of normal data (so about 5% of
#: normal images are flagged: the false-positive rate is fixed in advance, without seeing any anomaly)
DEFAULT_ANOMALY_QUANTILE = 0.95


def check_quantile(quantile: float) -> float:
    """Raises ConfigError unless 0 < quantile < 1."""
    if not 0.0 < quantile < 1.0:
        raise ConfigError(
            f"anomaly_quantile must lie strictly between 0 and 1 (0.95 flags about 5% of normal data), "
            f"got {quantile}"
        )
    return quantile


def squash(scores: Tensor) -> Tensor:
    """Maps scores monotonically into (0, 1), in float64: torchmetrics passes scores outside [0, 1] through a
    sigmoid, which rounds every score above ~37 to exactly 1 and so would tie all large scores."""
    scores = scores.detach().double()
    return 0.5 + 0.5 * scores / (1.0 + scores.abs())


class ScoreQuantile(Metric):
    """A quantile of all scores seen (gathered across devices): the one-class anomaly threshold."""

    full_state_update = False

    def __init__(self, quantile: float = DEFAULT_ANOMALY_QUANTILE) -> None:
        super().__init__()
        self.quantile = check_quantile(quantile)
        self.add_state("scores", [], dist_reduce_fx="cat")

    def update(self, scores: Tensor) -> None:
        self.scores.append(scores.detach().double().flatten())

    def compute(self) -> Tensor:
        scores = self.scores if isinstance(self.scores, Tensor) else torch.cat(self.scores)
        # "higher": the threshold is a score that occurred, and at most (1 - q) of normal scores exceed it
        return torch.quantile(scores, self.quantile, interpolation="higher")


class OneClassMetrics(nn.Module):
    """AUROC and AUPR of anomaly scores (anomaly = positive class), and F1 of `score > threshold`."""

    def __init__(self) -> None:
        super().__init__()
        self.auroc = BinaryAUROC()
        self.aupr = BinaryAveragePrecision()
        self.f1 = BinaryF1Score()

    def update(self, scores: Tensor, is_anomaly: Tensor, threshold: float | None) -> None:
        """`scores` (B,), higher = more anomalous; `is_anomaly` (B,) the targets; F1 only with a threshold."""
        target = is_anomaly.long()
        self.auroc.update(squash(scores), target)
        self.aupr.update(squash(scores), target)
        if threshold is not None:
            # integer predictions: torchmetrics takes them as the decisions, with no threshold of its own
            self.f1.update((scores.detach() > threshold).long(), target)
