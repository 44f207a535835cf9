"""One-class anomaly detection metrics: AUROC, AUPR, and F1 at a threshold chosen on normal data only."""

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc, binary_average_precision, binary_f1_score
from torchmetrics.utilities import dim_zero_cat

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
    """A quantile of the scores seen (gathered across devices) where `keep` is true: the one-class anomaly
    threshold. The scores to leave out are dropped at `compute`, not in `update`: selecting them there would
    make the host wait for a GPU at every batch to learn how many are left."""

    full_state_update = False

    def __init__(self, quantile: float = DEFAULT_ANOMALY_QUANTILE) -> None:
        super().__init__()
        self.quantile = check_quantile(quantile)
        self.add_state("scores", [], dist_reduce_fx="cat")
        self.add_state("keep", [], dist_reduce_fx="cat")

    def update(self, scores: Tensor, keep: Tensor | None = None) -> None:
        """`scores` (B,); `keep` (B,) bool, the scores that count (default all)."""
        scores = scores.detach().double().flatten()
        self.scores.append(scores)
        self.keep.append(torch.ones_like(scores) if keep is None else keep.flatten().double())

    def compute(self) -> Tensor:
        scores, keep = (dim_zero_cat(state) for state in (self.scores, self.keep))
        # "higher": the threshold is a score that occurred, and at most (1 - q) of normal scores exceed it
        return torch.quantile(scores[keep.bool()], self.quantile, interpolation="higher")


class OneClassMetrics(Metric):
    """AUROC and AUPR of anomaly scores (anomaly = positive class), and F1 of `score > threshold`, over
    everything seen (gathered across devices).

    The scores and targets are kept as they come and measured at `compute`, at the end of an epoch:
    torchmetrics' binary metrics check and normalise their inputs in every `update`, which on a CPU reads
    them on the host.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("scores", [], dist_reduce_fx="cat")
        self.add_state("targets", [], dist_reduce_fx="cat")
        #: the decision threshold of `f1` (None: no F1)
        self.threshold: float | None = None

    def update(self, scores: Tensor, gt_anomaly: Tensor) -> None:
        """`scores` (B,), higher = more anomalous; `gt_anomaly` (B,) the targets."""
        self.scores.append(scores.detach().double().flatten())
        self.targets.append(gt_anomaly.flatten().long())

    def compute(self) -> dict[str, Tensor]:
        """`auroc`, `aupr` and, with a threshold, `f1`."""
        scores, targets = dim_zero_cat(self.scores), dim_zero_cat(self.targets)
        results = {
            "auroc": binary_auroc(squash(scores), targets, validate_args=False),
            "aupr": binary_average_precision(squash(scores), targets, validate_args=False),
        }
        if self.threshold is not None:
            # integer predictions: torchmetrics takes them as the decisions, with no threshold of its own
            decisions = (scores > self.threshold).long()
            results["f1"] = binary_f1_score(decisions, targets, validate_args=False)
        return results
