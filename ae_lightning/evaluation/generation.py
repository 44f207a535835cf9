"""How good a model's samples are: the Fréchet distance between the features of samples and of test images
(FID, Heusel et al., 2017), with precision and recall of the samples (Kynkäänniemi et al., 2019), in the
feature space of a small classifier of the data (not Inception: not comparable with published FIDs)."""

from pathlib import Path

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from ae_lightning.autoencoders.base import LatentModel
from ae_lightning.autoencoders.interface import Generative
from ae_lightning.errors import ConfigError
from ae_lightning.evaluation.metric import EvaluationMetric

#: k of the k-nearest-neighbour balls of precision and recall (Kynkäänniemi et al.)
NEIGHBOURS = 3
#: rows of a distance matrix computed at once (memory: rows x the other set's size)
DISTANCE_ROWS = 1024


def frechet_distance(real: Tensor, generated: Tensor) -> Tensor:
    """|mu_r - mu_g|^2 + tr(C_r + C_g - 2 (C_r C_g)^(1/2)) of two feature sets (N, F), in float64."""
    real, generated = real.double(), generated.double()
    mean_r, mean_g = real.mean(0), generated.mean(0)
    cov_r, cov_g = torch.cov(real.T), torch.cov(generated.T)
    # tr (C_r C_g)^(1/2) = tr (C_r^(1/2) C_g C_r^(1/2))^(1/2): a symmetric matrix, so eigvalsh
    values, vectors = torch.linalg.eigh(cov_r)
    root_r = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    cross = torch.linalg.eigvalsh(root_r @ cov_g @ root_r).clamp(min=0).sqrt().sum()
    return (mean_r - mean_g).square().sum() + cov_r.trace() + cov_g.trace() - 2 * cross


def kth_neighbour_distances(points: Tensor, k: int = NEIGHBOURS) -> Tensor:
    """The distance of each point (N, F) to its k-th nearest other point of the set, (N,)."""
    distances = [
        torch.cdist(rows, points).topk(k + 1, largest=False).values[:, k]
        for rows in points.split(DISTANCE_ROWS)
    ]
    return torch.cat(distances)


def covered(points: Tensor, centres: Tensor, radii: Tensor) -> Tensor:
    """The fraction of `points` inside at least one ball (centres (M, F), radii (M,))."""
    inside = [(torch.cdist(rows, centres) <= radii).any(1) for rows in points.split(DISTANCE_ROWS)]
    return torch.cat(inside).double().mean()


class Generation(EvaluationMetric):
    """`fid`, `precision` and `recall` of the model's samples at test: for every test batch, as many samples
    as it has images (so the test set of MNIST gives 10,000 samples against its 10,000 images), both mapped
    to the features of a classifier of the data and compared over the whole set, on all devices.

    The classifier: the datamodule's (`AutoencoderDataModule.feature_network`: the MNIST family trains and
    caches one), or a TorchScript file named by `feature_network` (images (B, C, H, W) in [0, 1] -> features
    (B, F)) for other data. With neither, the metric is skipped with a notice.

    Args:
        value_range: the data's range (the classifier takes images in [0, 1]).
        feature_network: a TorchScript file of a feature network for data the framework has none for.
    """

    reads = ("inputs", "samples")
    stages = ("test",)

    def __init__(
        self, value_range: tuple[float, float] = (0.0, 1.0), feature_network: str | None = None
    ) -> None:
        super().__init__()
        self.value_range = tuple(value_range)
        self.feature_network = feature_network
        self.features = FeatureSets()
        #: the classifier, held outside the module's state (not saved in checkpoints, moved on first use)
        self.network: tuple[nn.Module, ...] = ()

    def applies_to(self, model: LatentModel) -> bool:
        return isinstance(model, Generative) and len(model.image_shape) == 3

    def prepare(self, data_features: nn.Module | None, device: torch.device) -> None:
        """Takes the feature network, on `device`: the named file's, else the data's; none: skipped, with a
        notice."""
        if self.feature_network is not None:
            path = Path(self.feature_network)
            if not path.is_file():
                raise ConfigError(
                    f"feature_network {path} is not a file: give a TorchScript file of a network"
                )
            self.network = (torch.jit.load(str(path), map_location=device).eval(),)
        elif data_features is not None:
            self.network = (data_features.to(device),)
        else:
            self.network = ()
            rank_zero_info(
                "test/fid skipped: the framework has no feature classifier for this data; name one with "
                "--model.metrics+=ae_lightning.evaluation.Generation --model.metrics.feature_network FILE"
            )

    def update(self, values: dict[str, Tensor]) -> None:
        if not self.network:
            return
        network = self.network[0]
        low, high = self.value_range
        with torch.autocast(values["inputs"].device.type, enabled=False):
            real = network((values["inputs"].float() - low) / (high - low))
            generated = network((values["samples"].float() - low) / (high - low))
        self.features.update(real, generated)

    def compute(self) -> dict[str, Tensor]:
        real, generated = self.features.compute()
        precision = covered(generated, real, kth_neighbour_distances(real))
        recall = covered(real, generated, kth_neighbour_distances(generated))
        return {"fid": frechet_distance(real, generated), "precision": precision, "recall": recall}


class FeatureSets(Metric):
    """The features of the real images and of the samples, gathered across devices at `compute`."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("real", [], dist_reduce_fx="cat")
        self.add_state("generated", [], dist_reduce_fx="cat")

    def update(self, real: Tensor, generated: Tensor) -> None:
        self.real.append(real.detach().float())
        self.generated.append(generated.detach().float())

    def compute(self) -> tuple[Tensor, Tensor]:
        return dim_zero_cat(self.real), dim_zero_cat(self.generated)
