"""The vector quantizer of VQ-VAE (van den Oord et al., 2017), with optional EMA codebook updates and
dead-code reset, kept identical on every process under data-parallel training."""

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ae_lightning.nets.one_hot import one_hot

#: decay of the moving average of each code's use that finds dead codes (about the last 100 steps)
USAGE_DECAY = 0.99
#: Laplace smoothing of the EMA cluster sizes, so a code chosen by no vector keeps a finite value
EMA_EPSILON = 1e-5


class Quantized(NamedTuple):
    """What the quantizer gives for N input vectors."""

    codes: Tensor  # (N, code_dim): the nearest code's value, with the gradient passed straight to the input
    indices: Tensor  # (N,): which code
    commitment: Tensor  # (N,): ||z - sg(e)||^2, pulls the encoder towards its code
    codebook: Tensor  # (N,): ||sg(z) - e||^2, pulls the code towards the encoder (0 gradient with EMA)


def usage_statistics(counts: Tensor) -> dict[str, Tensor]:
    """Perplexity exp(H(p)) of the code distribution p = counts / sum, and the fraction of codes used."""
    probs = counts.double() / counts.sum().clamp(min=1)
    entropy = -(probs * probs.clamp(min=1e-12).log()).sum()
    return {"perplexity": entropy.exp().float(), "codes_used": (counts > 0).double().mean().float()}


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _sum_over_processes(tensor: Tensor) -> Tensor:
    """Sums `tensor` in place over every process of the default group (a no-op in a single process)."""
    if _is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


class VectorQuantizer(nn.Module):
    """Replaces each vector by its nearest entry of a codebook of `codebook_size` vectors of `code_dim`.

    The forward pass gives the code; the backward pass copies the gradient of the code to the input
    (straight-through estimator). The codebook is learnt either by gradient of the `codebook` loss
    (`ema_decay` 0) or as an exponential moving average of the vectors assigned to each code (`ema_decay` in
    (0, 1), the paper's appendix). With `dead_code_threshold` > 0, codes whose moving-average use falls below
    that fraction of the mean use are moved onto randomly chosen input vectors.

    Statistics change only in calls with `update=True` (training steps). Under torch.distributed the counts
    and sums are added over all processes before they are used, and replacement codes come from process 0,
    so every process keeps the same codebook (with a gradient-learnt codebook, DDP's gradient averaging
    keeps it identical; resets are broadcast too).
    """

    def __init__(
        self, codebook_size: int, code_dim: int, ema_decay: float = 0.0, dead_code_threshold: float = 0.0
    ) -> None:
        super().__init__()
        if codebook_size < 2 or code_dim < 1:
            raise ValueError(f"need codebook_size >= 2 and code_dim >= 1, got {codebook_size} and {code_dim}")
        if not 0 <= ema_decay < 1 or dead_code_threshold < 0:
            raise ValueError(f"need 0 <= ema_decay < 1 and dead_code_threshold >= 0, got {ema_decay}, "
                             f"{dead_code_threshold}")  # fmt: skip
        self.codebook_size = codebook_size
        self.code_dim = code_dim
        self.ema_decay = ema_decay
        self.dead_code_threshold = dead_code_threshold
        initial = torch.empty(codebook_size, code_dim).uniform_(-1 / codebook_size, 1 / codebook_size)
        if ema_decay > 0:
            self.register_buffer("codebook", initial)
            # each code starts as if one vector equal to its initial value had been assigned to it
            self.register_buffer("ema_count", torch.ones(codebook_size))
            self.register_buffer("ema_code_sum", initial.clone())
        else:
            self.codebook = nn.Parameter(initial)
        #: moving average of how many vectors each code receives per step (all processes together); it starts
        #: at 0, so the first update finds every code no vector chose dead and, with resets on, moves it onto
        #: the data
        self.register_buffer("usage", torch.zeros(codebook_size))
        #: assignments per code in the last update, summed over processes (for logging)
        self.last_counts: Tensor | None = None

    def nearest(self, z: Tensor) -> Tensor:
        """Index of the nearest code of each vector, (N, code_dim) -> (N,)."""
        # in float32 even under mixed precision: half-precision distances would pick wrong codes
        with torch.no_grad(), torch.autocast(z.device.type, enabled=False):
            z, codebook = z.float(), self.codebook.float()
            distances = z.square().sum(1, keepdim=True) - 2 * z @ codebook.T + codebook.square().sum(1)
            return distances.argmin(1)

    def forward(self, z: Tensor, update: bool = False) -> Quantized:
        """Quantizes `z` (N, code_dim); with `update`, then updates the codebook statistics."""
        indices = self.nearest(z)
        code = F.embedding(indices, self.codebook).to(z.dtype)
        # the loss terms in float32 whatever the precision of z (the straight-through output keeps it)
        commitment = (z.float() - code.detach().float()).square().sum(1)
        codebook_loss = (z.detach().float() - code.float()).square().sum(1)
        if update:
            # the moving averages accumulate over thousands of steps: keep them in float32
            with torch.autocast(z.device.type, enabled=False):
                self._update(z.detach().float(), indices)
        return Quantized(z + (code - z).detach(), indices, commitment, codebook_loss)

    @torch.no_grad()
    def _update(self, z: Tensor, indices: Tensor) -> None:
        """Moving averages of the code use (and, with EMA, of the code values), then dead-code reset."""
        assigned = one_hot(indices, self.codebook_size)  # (N, codebook_size)
        counts = _sum_over_processes(assigned.sum(0))
        self.last_counts = counts
        self.usage.mul_(USAGE_DECAY).add_(counts, alpha=1 - USAGE_DECAY)
        if self.ema_decay > 0:
            decay = self.ema_decay
            sums = _sum_over_processes(assigned.T @ z)
            self.ema_count.mul_(decay).add_(counts, alpha=1 - decay)
            self.ema_code_sum.mul_(decay).add_(sums, alpha=1 - decay)
            total = self.ema_count.sum()
            smoothed = (self.ema_count + EMA_EPSILON) / (total + self.codebook_size * EMA_EPSILON) * total
            self.codebook.copy_(self.ema_code_sum / smoothed[:, None])
        if self.dead_code_threshold > 0:
            self._reset_dead_codes(z)

    def _reset_dead_codes(self, z: Tensor) -> None:
        """Moves codes used less than `dead_code_threshold` x the mean use onto input vectors of process 0.

        Without a branch on the host: a candidate vector is drawn for every code at every update and only the
        dead codes take theirs, so the host never waits for the device to learn how many codes are dead.
        """
        mean_usage = self.usage.mean()
        # usage is the same on every process, so all find the same dead codes
        dead = self.usage < self.dead_code_threshold * mean_usage  # (codebook_size,)
        picks = torch.randint(z.shape[0], (self.codebook_size,), device=z.device)
        replacements = z[picks].to(self.codebook.dtype).contiguous()
        if _is_distributed():
            dist.broadcast(replacements, src=0)
        rows = dead[:, None]
        self.codebook.data.copy_(torch.where(rows, replacements, self.codebook.data))
        # a reset code starts as an average one, so it has time to be chosen before it counts as dead again
        self.usage.copy_(torch.where(dead, mean_usage, self.usage))
        if self.ema_decay > 0:
            mean_count = self.ema_count.mean()
            self.ema_count.copy_(torch.where(dead, mean_count, self.ema_count))
            self.ema_code_sum.copy_(torch.where(rows, replacements * mean_count, self.ema_code_sum))
