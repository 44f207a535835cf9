"""Pixel-level anomaly localisation metrics: the pixel AUROC, the AUPRO of MVTec AD (Bergmann et al., IJCV
2021) and the pixel F1. `anomaly_map` (B, H, W) is higher where more anomalous, `gt_mask` (B, H, W) true on
the defects.

AUROC and AUPRO come exact (every pixel kept as it comes, measured at `compute`, as `OneClassMetrics` does:
checking inputs in each `update` would make the host wait) or binned: per-bin counts over a fixed score range,
summed across devices, in memory that does not grow with the data. The range is given at construction or set
on `score_range` before the first `update`, since it usually comes from the validation maps.
"""

import math

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc
from torchmetrics.utilities import dim_zero_cat

from ae_lightning.errors import ConfigError
from ae_lightning.evaluation.one_class import squash
from ae_lightning.evaluation.regions import DEFAULT_CONNECTIVITY, check_connectivity, connected_regions

#: the integration limit of MVTec AD's AUPRO (`--pro_integration_limit`), anomalib's `fpr_limit`
DEFAULT_MAX_FPR = 0.3


def check_maps(anomaly_map: Tensor, gt_mask: Tensor) -> None:
    """Raises ValueError unless both are (B, H, W) of the same shape."""
    if anomaly_map.ndim != 3 or anomaly_map.shape != gt_mask.shape:
        raise ValueError(
            f"anomaly_map and gt_mask must both be (B, H, W), got {tuple(anomaly_map.shape)} and "
            f"{tuple(gt_mask.shape)}"
        )


def check_num_bins(num_bins: int | None) -> int | None:
    """Raises ConfigError unless num_bins is None (exact) or a positive number of bins."""
    if num_bins is not None and num_bins < 1:
        raise ConfigError(
            f"num_bins must be a positive number of score bins, or None for exact, got {num_bins}"
        )
    return num_bins


def bin_index(scores: Tensor, num_bins: int, score_range: tuple[float, float] | None) -> Tensor:
    """(N,) scores -> (N,) int64 bins: bin i holds [low + i w, low + (i + 1) w) with w = (high - low) /
    num_bins, so `score >= low + i w` is `bin >= i`; scores outside the range go to the first or last bin."""
    if score_range is None or not score_range[0] < score_range[1]:
        raise ConfigError(
            f"binned metrics need score_range = (low, high) with low < high, set before update (e.g. from "
            f"the validation maps), got {score_range}"
        )
    low, high = score_range
    position = (scores.detach().double() - low) * (num_bins / (high - low))
    return position.floor().clamp(0, num_bins - 1).long()


def from_the_top(counts: Tensor) -> Tensor:
    """(num_bins,) per-bin counts -> (num_bins + 1,) the totals at or above each threshold, from above the
    top bin (0) down to the first bin's lower edge (everything): the order of increasing false positives."""
    return torch.cat([counts.new_zeros(1), counts.flip(0).cumsum(0)]).double()


def area_up_to(x: Tensor, y: Tensor, limit: float) -> Tensor:
    """Trapezoid area under the curve (x, y), x (N,) ascending from 0, over [0, limit]: the segment that
    crosses `limit` is cut there, y interpolated linearly on it (MVTec AD's `trapezoid(..., x_max)`)."""
    left_x, right_x, left_y, right_y = x[:-1], x[1:], y[:-1], y[1:]
    # how far each segment runs below the limit: all of it, part of it (the crossing one) or none
    reach = (right_x.clamp(max=limit) - left_x).clamp(min=0)
    width = right_x - left_x
    # a vertical segment (width 0) adds nothing; guard its division
    end_y = left_y + (right_y - left_y) * reach / torch.where(width > 0, width, 1.0)
    return (0.5 * (left_y + end_y) * reach).sum()


class PixelAUROC(Metric):
    """The AUROC over all pixels seen (gathered across devices), a defect pixel being a positive. Exact with
    `num_bins=None`; else over `num_bins` equal bins of `score_range` (scores clamped into it), where pixels
    in one bin tie. NaN where there are no defect pixels or no normal ones."""

    full_state_update = False

    def __init__(self, num_bins: int | None = None, score_range: tuple[float, float] | None = None) -> None:
        super().__init__()
        self.num_bins = check_num_bins(num_bins)
        #: (low, high) of the binned scores; set before the first update
        self.score_range = score_range
        if num_bins is None:
            self.add_state("scores", [], dist_reduce_fx="cat")
            self.add_state("targets", [], dist_reduce_fx="cat")
        else:
            self.add_state("positives", torch.zeros(num_bins, dtype=torch.long), dist_reduce_fx="sum")
            self.add_state("negatives", torch.zeros(num_bins, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, anomaly_map: Tensor, gt_mask: Tensor) -> None:
        """`anomaly_map` (B, H, W) float; `gt_mask` (B, H, W) bool or 0/1."""
        check_maps(anomaly_map, gt_mask)
        defect = gt_mask.flatten().bool()
        if self.num_bins is None:
            self.scores.append(anomaly_map.detach().flatten().float())
            self.targets.append(defect.to(torch.uint8))  # uint8: not every backend gathers bool
            return
        bins = bin_index(anomaly_map.flatten(), self.num_bins, self.score_range)
        self.positives = self.positives.index_add(0, bins, defect.long())
        self.negatives = self.negatives.index_add(0, bins, (~defect).long())

    def compute(self) -> Tensor:
        """The AUROC, a float scalar."""
        if self.num_bins is None:
            scores, targets = dim_zero_cat(self.scores), dim_zero_cat(self.targets).long()
            if int(targets.sum()) in (0, targets.numel()):
                return torch.tensor(math.nan, device=self.device)
            return binary_auroc(squash(scores), targets, validate_args=False).float()
        positives, negatives = from_the_top(self.positives), from_the_top(self.negatives)
        if positives[-1] == 0 or negatives[-1] == 0:
            return torch.tensor(math.nan, device=self.device)
        return torch.trapezoid(positives / positives[-1], negatives / negatives[-1]).float()


class AUPRO(Metric):
    """The area under the per-region-overlap curve up to a false-positive rate `max_fpr`, divided by
    `max_fpr` (1: perfect), over everything seen (gathered across devices), as MVTec AD defines it.

    At a threshold t, PRO is the mean over every connected region of every mask of the fraction of its pixels
    scoring >= t; FPR is the fraction of normal pixels (all pixels of defect-free images included) scoring
    >= t. The curve runs from (0, 0) through one point per distinct score (per bin, binned) to (1, 1), and is
    integrated with the trapezoid rule up to `max_fpr`, linear between the points around it. NaN where there
    are no regions or no normal pixels.

    A region's pixels each carry 1 / (its size), so PRO at t is the sum of the weights scoring >= t divided
    by the number of regions: sums that add up across batches and devices.
    """

    full_state_update = False

    def __init__(
        self,
        max_fpr: float = DEFAULT_MAX_FPR,
        num_bins: int | None = None,
        score_range: tuple[float, float] | None = None,
        connectivity: int = DEFAULT_CONNECTIVITY,
    ) -> None:
        super().__init__()
        if not 0.0 < max_fpr <= 1.0:
            raise ConfigError(f"max_fpr must lie in (0, 1] (MVTec AD integrates up to 0.3), got {max_fpr}")
        self.max_fpr = max_fpr
        self.num_bins = check_num_bins(num_bins)
        #: (low, high) of the binned scores; set before the first update
        self.score_range = score_range
        self.connectivity = check_connectivity(connectivity)
        self.add_state("num_regions", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        if num_bins is None:
            self.add_state("scores", [], dist_reduce_fx="cat")
            # 0 on normal pixels, 1 / (region size) on a region's pixels
            self.add_state("weights", [], dist_reduce_fx="cat")
        else:
            self.add_state("normal_counts", torch.zeros(num_bins, dtype=torch.long), dist_reduce_fx="sum")
            self.add_state("overlap_sums", torch.zeros(num_bins, dtype=torch.double), dist_reduce_fx="sum")

    def update(self, anomaly_map: Tensor, gt_mask: Tensor) -> None:
        """`anomaly_map` (B, H, W) float; `gt_mask` (B, H, W) bool or 0/1."""
        check_maps(anomaly_map, gt_mask)
        labels = connected_regions(gt_mask, self.connectivity).flatten()
        numbers = torch.arange(1, labels.numel() + 1, device=labels.device)
        # labels name a region by 1 + its last pixel's index: that pixel alone has label == own number
        self.num_regions = self.num_regions + (labels == numbers).sum()
        sizes = torch.zeros(labels.numel() + 1, dtype=torch.double, device=labels.device)
        sizes = sizes.index_add(0, labels, torch.ones_like(sizes[1:]))
        weights = torch.where(labels > 0, 1.0 / sizes[labels], 0.0)
        if self.num_bins is None:
            self.scores.append(anomaly_map.detach().flatten().float())
            self.weights.append(weights.float())
            return
        bins = bin_index(anomaly_map.flatten(), self.num_bins, self.score_range)
        self.normal_counts = self.normal_counts.index_add(0, bins, (labels == 0).long())
        self.overlap_sums = self.overlap_sums.index_add(0, bins, weights)

    def curve(self) -> tuple[Tensor, Tensor]:
        """The PRO curve: (N,) FPR ascending from 0 to 1 and (N,) the PRO at each (float64)."""
        if self.num_bins is not None:
            false_positives, overlaps = from_the_top(self.normal_counts), from_the_top(self.overlap_sums)
        else:
            scores, weights = dim_zero_cat(self.scores), dim_zero_cat(self.weights).double()
            order = scores.argsort(descending=True)
            scores, weights = scores[order], weights[order]
            # a threshold flags every pixel scoring >= it: keep the point after the last pixel of each tie
            last_of_tie = torch.cat([scores[1:] != scores[:-1], scores.new_ones(1, dtype=torch.bool)])
            zero = weights.new_zeros(1)
            false_positives = torch.cat([zero, (weights == 0).double().cumsum(0)[last_of_tie]])
            overlaps = torch.cat([zero, weights.cumsum(0)[last_of_tie]])
        return false_positives / false_positives[-1], overlaps / self.num_regions

    def compute(self) -> Tensor:
        """The normalised AUPRO, a float scalar in [0, 1]."""
        if self.num_regions == 0:
            return torch.tensor(math.nan, device=self.device)
        fpr, pro = self.curve()
        if fpr.isnan().any():
            return torch.tensor(math.nan, device=self.device)
        return (area_up_to(fpr, pro.clamp(max=1.0), self.max_fpr) / self.max_fpr).float()


class PixelF1(Metric):
    """The F1 of `anomaly_map > threshold` against the masks over all pixels seen (summed across devices);
    0 where there are neither defects nor flagged pixels. The threshold is set before the first update."""

    full_state_update = False

    def __init__(self, threshold: float | None = None) -> None:
        super().__init__()
        #: the decision threshold on the anomaly map
        self.threshold = threshold
        for name in ("true_positives", "false_positives", "false_negatives"):
            self.add_state(name, torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, anomaly_map: Tensor, gt_mask: Tensor) -> None:
        """`anomaly_map` (B, H, W) float; `gt_mask` (B, H, W) bool or 0/1."""
        check_maps(anomaly_map, gt_mask)
        if self.threshold is None:
            raise ConfigError("PixelF1 needs its threshold set before update (e.g. from the validation maps)")
        flagged, defect = anomaly_map.detach() > self.threshold, gt_mask.bool()
        self.true_positives = self.true_positives + (flagged & defect).sum()
        self.false_positives = self.false_positives + (flagged & ~defect).sum()
        self.false_negatives = self.false_negatives + (~flagged & defect).sum()

    def compute(self) -> Tensor:
        """The F1, a float scalar."""
        denominator = 2 * self.true_positives + self.false_positives + self.false_negatives
        return (2 * self.true_positives / denominator.clamp(min=1)).float()
