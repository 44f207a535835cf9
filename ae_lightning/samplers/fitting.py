"""What the samplers that fit a network to the training codes share: their options' checks, the codes'
standardisation, a seeded initialisation and the minibatch Adam epochs (plain PyTorch)."""

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ae_lightning.errors import ConfigError, TrainingError
from ae_lightning.samplers.base import Progress

#: a code unit whose standard deviation is below this is not rescaled (a VAE's collapsed unit: constant means)
TINY_STD = 1e-6


class MinibatchFitted(nn.Module):
    """A mixin of the samplers that fit a network to the codes by minibatches: their training options and
    the buffers of the codes' standardisation."""

    name: str
    latent_dim: int

    def set_fit_options(self, epochs: int, batch_size: int, learning_rate: float, seed: int) -> None:
        """Keeps the training options, refused in one line unless there are epochs, non-empty batches and a
        positive learning rate; registers `mean` and `std` (the codes' standardisation, set by the fit)."""
        if epochs < 1 or batch_size < 1 or not learning_rate > 0:
            raise ConfigError(
                f"{self.name} needs epochs >= 1, batch_size >= 1 and learning_rate > 0, got {epochs}, "
                f"{batch_size}, {learning_rate}"
            )
        self.epochs, self.batch_size, self.learning_rate, self.seed = epochs, batch_size, learning_rate, seed
        self.register_buffer("mean", torch.zeros(self.latent_dim))
        self.register_buffer("std", torch.ones(self.latent_dim))

    def fit_options(self) -> dict[str, int | float]:
        """The training options, for `Sampler.options`."""
        return {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "seed": self.seed,
        }


def standardisation(codes: Tensor) -> tuple[Tensor, Tensor]:
    """The mean and standard deviation of each unit of the codes (N, D), each (D,) in the codes' dtype:
    a network fits the standardised codes at the scale its initialisation and learning rate assume."""
    wide = codes.double()
    mean, std = wide.mean(0), wide.std(0, correction=0)
    std = torch.where(std > TINY_STD, std, torch.ones_like(std))
    return mean.to(codes.dtype), std.to(codes.dtype)


@torch.no_grad()
def seeded_reset(module: nn.Module, generator: torch.Generator) -> None:
    """Draws every `nn.Linear` of `module` again as PyTorch initialises it (weights and biases uniform in
    +-1/sqrt(fan_in)), from `generator` (on the parameters' device): the same seed, the same start."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            bound = 1 / math.sqrt(layer.in_features)
            for parameter in (layer.weight, layer.bias):
                if parameter is not None:
                    parameter.uniform_(-bound, bound, generator=generator)


def fit_by_minibatches(
    module: nn.Module,
    loss: Callable[[Tensor], Tensor],
    data: Tensor,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    generator: torch.Generator,
    progress: Progress | None,
    name: str,
) -> float:
    """Adam on the mean of `loss(batch)` ((B, D) -> (B,)) over `data` (N, D), shuffled by `generator` (on the
    data's device) every epoch; `progress(epoch, epochs)` after each. Returns the last epoch's mean loss.

    Raises TrainingError when the loss turns NaN or infinite (read once an epoch: one wait for a GPU).
    """
    optimizer = torch.optim.Adam(module.parameters(), lr=learning_rate)
    count = data.shape[0]
    module.train()
    mean_loss = math.nan
    for epoch in range(1, epochs + 1):
        order = torch.randperm(count, generator=generator, device=data.device)
        total = data.new_zeros((), dtype=torch.float64)
        for start in range(0, count, batch_size):
            batch = data[order[start : start + batch_size]]
            batch_loss = loss(batch).mean()
            optimizer.zero_grad(set_to_none=True)
            batch_loss.backward()
            optimizer.step()
            total += batch_loss.detach() * batch.shape[0]
        mean_loss = float(total) / count
        if not math.isfinite(mean_loss):
            raise TrainingError(
                f"{name}: the fit's loss became {mean_loss} in epoch {epoch}: lower learning_rate"
            )
        if progress is not None:
            progress(epoch, epochs)
    module.eval()
    return mean_loss
