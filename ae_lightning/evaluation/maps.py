"""The anomaly maps measured: their scale and pixel threshold, set on the normal validation images, and the
localisation metrics at test (pixel AUROC, AUPRO, pixel F1) against the ground-truth masks."""

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from ae_lightning.autoencoders.base import LatentModel
from ae_lightning.autoencoders.interface import Localizes
from ae_lightning.evaluation.localisation import AUPRO, DEFAULT_MAX_FPR, PixelAUROC, PixelF1
from ae_lightning.evaluation.metric import EvaluationMetric

#: pixels of one image the validation quantile looks at, at most (an even grid of them): the threshold of a
#: large image is as good from 4096 of its pixels, and 1,000 images of 256 x 256 keep 32 MB, not 500 MB
PIXELS_PER_IMAGE = 4096
#: the test sets with at most this many pixels (over all devices) are measured exactly; larger ones in bins
MAX_EXACT_PIXELS = 2**22
#: bins of a large test set, over [low, low + HEADROOM * (high - low)] of the validation maps' range: the
#: defects of test images score above every normal pixel, and must not all fall into the last bin
NUM_BINS, HEADROOM = 2**14, 4.0


@dataclass(frozen=True)
class MapCalibration:
    """What the normal validation images' maps say, saved with a checkpoint and in an export's
    `model.json`: the range of their pixels (the heat maps' colour scale and the bins' range) and the pixel
    threshold (the same quantile of their pixels as the image threshold is of their scores)."""

    low: float
    high: float
    pixel_threshold: float

    @property
    def scale(self) -> tuple[float, float]:
        """(low, high): the heat maps' colour scale."""
        return self.low, self.high

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    @staticmethod
    def from_dict(saved: dict[str, float] | None) -> "MapCalibration | None":
        return None if saved is None else MapCalibration(**saved)


def even_pixels(anomaly_map: Tensor, count: int = PIXELS_PER_IMAGE) -> Tensor:
    """At most about `count` pixels of each map (B, H, W), on an even grid: (B, n) float."""
    height, width = anomaly_map.shape[-2:]
    stride = max(1, math.ceil(math.sqrt(height * width / count)))
    return anomaly_map[:, ::stride, ::stride].flatten(1)


class PixelCalibration(Metric):
    """The range and a quantile of the pixels of the maps of normal images seen (gathered across devices):
    Images that are not normal are dropped at `compute`, not in `update`
    (selecting them there would make the host wait for a GPU at every batch). `compute` gives (low, high,
    pixel threshold) as a (3,) tensor; `calibration` the same as a `MapCalibration`."""

    full_state_update = False

    def __init__(self, quantile: float) -> None:
        super().__init__()
        self.quantile = quantile
        self.add_state("pixels", [], dist_reduce_fx="cat")
        self.add_state("keep", [], dist_reduce_fx="cat")
        self.add_state("low", torch.tensor(math.inf, dtype=torch.float64), dist_reduce_fx="min")
        self.add_state("high", torch.tensor(-math.inf, dtype=torch.float64), dist_reduce_fx="max")

    def update(self, anomaly_map: Tensor, keep: Tensor) -> None:
        """`anomaly_map` (B, H, W); `keep` (B,) bool, the normal images."""
        anomaly_map, keep = anomaly_map.detach().double(), keep.bool()
        flat = anomaly_map.flatten(1)
        self.low = torch.minimum(self.low, torch.where(keep, flat.amin(1), math.inf).min())
        self.high = torch.maximum(self.high, torch.where(keep, flat.amax(1), -math.inf).max())
        sampled = even_pixels(anomaly_map)
        self.pixels.append(sampled.flatten())
        self.keep.append(keep[:, None].expand_as(sampled).flatten())

    def compute(self) -> Tensor:
        pixels, keep = dim_zero_cat(self.pixels), dim_zero_cat(self.keep)
        threshold = torch.quantile(pixels[keep.bool()], self.quantile, interpolation="higher")
        return torch.stack([self.low, self.high, threshold])

    def calibration(self) -> MapCalibration:
        """What `compute` gives, as a `MapCalibration`."""
        return MapCalibration(*self.compute().tolist())


class Localisation(EvaluationMetric):
    """`pixel_auroc`, `aupro` (MVTec AD's, up to a false-positive rate of `max_fpr`) and, with a pixel
    threshold, `pixel_f1` of the anomaly maps against the ground-truth masks (data with masks, models that
    localise). Exact on test sets of up to `MAX_EXACT_PIXELS` pixels; larger ones are binned over a range
    fixed from the validation maps (`calibrate`), in memory that does not grow with the data, so that one
    device and several give the same value."""

    reads = ("anomaly_map", "gt_mask")

    def __init__(self, max_fpr: float = DEFAULT_MAX_FPR) -> None:
        super().__init__()
        self.max_fpr = max_fpr
        self.auroc, self.aupro, self.f1 = PixelAUROC(), AUPRO(max_fpr), None

    def applies_to(self, model: LatentModel) -> bool:
        return isinstance(model, Localizes) and model.localizes()

    def calibrate(self, calibration: MapCalibration | None, pixels: int | None, device: torch.device) -> None:
        """Sets the metrics up for a test of `pixels` pixels in all (None: not known), with what validation
        found (None: nothing, then exact and without F1), on `device`."""
        exact = calibration is None or (pixels is not None and pixels <= MAX_EXACT_PIXELS)
        bins, score_range = None, None
        if not exact:
            low, high = calibration.low, calibration.high
            bins, score_range = NUM_BINS, (low, low + HEADROOM * max(high - low, 1e-12))
        self.auroc = PixelAUROC(bins, score_range).to(device)
        self.aupro = AUPRO(self.max_fpr, bins, score_range).to(device)
        threshold = None if calibration is None else calibration.pixel_threshold
        self.f1 = None if threshold is None else PixelF1(threshold).to(device)

    def update(self, values: dict[str, Tensor]) -> None:
        anomaly_map, gt_mask = values["anomaly_map"], values["gt_mask"]
        for metric in (self.auroc, self.aupro, self.f1):
            if metric is not None:
                metric.update(anomaly_map, gt_mask)

    def compute(self) -> dict[str, Tensor]:
        results = {"pixel_auroc": self.auroc.compute(), "aupro": self.aupro.compute()}
        return results | ({"pixel_f1": self.f1.compute()} if self.f1 is not None else {})
