"""A metric written as docs/architecture.md's "Adding a metric" says, given to the real CLI as
`--model.metrics+=tests.metrics.WorstReconstruction`."""

from torch import Tensor
from torchmetrics import MaxMetric

from ae_lightning.autoencoders import Autoencoder, Reconstructs
from ae_lightning.evaluation import EvaluationMetric


class WorstReconstruction(EvaluationMetric):
    """`worst_mse`: the largest per-image mean squared error of the test set."""

    reads = ("inputs", "reconstruction")

    def __init__(self) -> None:
        super().__init__()
        self.worst = MaxMetric()

    def applies_to(self, model: Autoencoder) -> bool:
        return isinstance(model, Reconstructs)

    def update(self, values: dict[str, Tensor]) -> None:
        self.worst.update((values["reconstruction"] - values["inputs"].float()).square().flatten(1).mean(1))

    def compute(self) -> dict[str, Tensor]:
        return {"worst_mse": self.worst.compute()}
