"""How good the codes are as features: linear-probe and k-nearest-neighbour accuracy of a labelled split."""

import torch
from torch import Tensor

from ae_lightning.errors import ConfigError


def standardize(train: Tensor, test: Tensor) -> tuple[Tensor, Tensor]:
    """Both sets scaled by the training set's mean and standard deviation per unit (dead units: std 1)."""
    mean, std = train.mean(0), train.std(0)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return (train - mean) / std, (test - mean) / std


def linear_probe_accuracy(
    train_z: Tensor,
    train_y: Tensor,
    test_z: Tensor,
    test_y: Tensor,
    steps: int = 100,
    weight_decay: float = 1e-4,
) -> float:
    """Accuracy on (test_z, test_y) of a multinomial logistic regression fitted on (train_z, train_y).

    The features are standardised with the training set's statistics; the fit is full-batch L-BFGS (`steps`
    iterations, deterministic, in float64) on the mean cross-entropy plus `weight_decay` x ||W||^2.
    """
    # Lightning tests under inference mode, which no enable_grad undoes: leave it, with copies of the inputs
    with torch.inference_mode(False), torch.enable_grad():
        return _fit_and_score_probe(
            train_z.clone(), train_y.clone(), test_z.clone(), test_y.clone(), steps, weight_decay
        )


def _fit_and_score_probe(
    train_z: Tensor, train_y: Tensor, test_z: Tensor, test_y: Tensor, steps: int, weight_decay: float
) -> float:
    train_z, test_z = standardize(train_z.double(), test_z.double())
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    weight = torch.zeros(train_z.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")
    targets = train_y.long()

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(train_z @ weight + bias, targets)
        loss = loss + weight_decay * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        predicted = (test_z @ weight + bias).argmax(1)
    return (predicted == test_y.long()).double().mean().item()


def knn_accuracy(
    train_z: Tensor, train_y: Tensor, test_z: Tensor, test_y: Tensor, k: int = 5, chunk_size: int = 256
) -> float:
    """Accuracy of a k-nearest-neighbour vote (Euclidean distance between standardised features; a tie
    goes to the smallest label) of each test point among the training points; distances are computed
    `chunk_size` test points at a time, so memory stays at chunk_size x len(train)."""
    if not 1 <= k <= len(train_z):
        raise ConfigError(
            f"knn_k must be between 1 and the number of training points ({len(train_z)}), got {k}"
        )
    train_z, test_z = standardize(train_z.float(), test_z.float())
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    correct = 0
    for start in range(0, len(test_z), chunk_size):
        distances = torch.cdist(test_z[start : start + chunk_size], train_z)
        neighbours = distances.topk(k, largest=False).indices  # (chunk, k)
        votes = torch.nn.functional.one_hot(train_y.long()[neighbours], num_classes).sum(1)
        correct += (votes.argmax(1) == test_y.long()[start : start + chunk_size]).sum().item()
    return correct / len(test_z)
