"""Hierarchical residual quantisation (Hosking, Tang & Lapata, 2022): a vector is replaced by the sum of one
entry of each of `num_levels` codebooks, each level quantising what the levels above it left over. Each
level is a `VectorQuantizer` (its codebook, use counts and dead-entry reset); this module chains them."""

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ae_lightning.nets.quantizer import VectorQuantizer

#: the smallest exponential draw kept, so that a Gumbel draw -log(draw) is always finite
TINY = torch.finfo(torch.float32).tiny
#: squared norms are clamped to at least this before a square root (an all-zero entry has no direction)
NORM_EPSILON = 1e-12


class ResidualQuantized(NamedTuple):
    """What the residual quantizer gives for N input vectors of `code_dim` (float32 whatever the input)."""

    codes: Tensor  # (N, code_dim): the sum of the chosen entries of the levels kept
    indices: Tensor  # (N, num_levels): the entry chosen at each level, int64
    commitment: Tensor  # (N,): ||z - sg(c)||^2, c the deterministic code (argmin at every level)
    kl: Tensor  # (N,): KL(softmax(-distances) || uniform) summed over levels
    norm_loss: Tensor  # (N,): the penalty on a deeper entry not smaller than the one above it


def squared_distances(z: Tensor, codebook: Tensor) -> Tensor:
    """||z_n - e_k||^2 of vectors (N, D) to entries (K, D) -> (N, K), differentiable in both."""
    # in float32 even under mixed precision: half-precision distances would pick wrong entries
    with torch.autocast(z.device.type, enabled=False):
        z, codebook = z.float(), codebook.float()
        return z.square().sum(1, keepdim=True) - 2 * z @ codebook.T + codebook.square().sum(1)


def gumbel_choice(logits: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """A draw from softmax(logits) (N, K) by the Gumbel-max trick: its index (N,), and the relaxed one-hot
    softmax((logits + g) / temperature) (N, K) whose gradient the straight-through estimator passes on."""
    gumbel = -torch.empty_like(logits).exponential_().clamp_min(TINY).log()
    perturbed = (logits + gumbel) / temperature
    return perturbed.argmax(1), perturbed.softmax(1)


def depth_keep_mask(num_vectors: int, num_levels: int, drop_rate: float, device: torch.device) -> Tensor:
    """Which levels each vector keeps, (N, num_levels) of 1 and 0: level 1 always; each deeper level is
    dropped with probability `drop_rate`, and with it every level below (depth dropout). Drawn on the device,
    so the host never learns how many levels are kept."""
    kept = torch.rand(num_vectors, num_levels - 1, device=device) >= drop_rate
    first = torch.ones(num_vectors, 1, device=device)
    return torch.cat([first, kept.float()], 1).cumprod(1)


def uniform_kl(logits: Tensor) -> Tensor:
    """KL(softmax(logits) || uniform) over the last dimension: (..., K) -> (...)."""
    log_probs = logits.log_softmax(-1)
    return (log_probs.exp() * log_probs).sum(-1) + math.log(logits.shape[-1])


def depth_norm_loss(entries: Tensor, scale: float) -> Tensor:
    """(max(scale ||e_(l+1)|| / ||e_l||, 1) - 1)^2 averaged over the consecutive levels of chosen entries
    (N, L, D) -> (N,): zero while each entry is at most 1 / scale of the norm of the one above it."""
    if entries.shape[1] == 1:  # nothing below the first level
        return entries.new_zeros(entries.shape[0])
    norms = entries.square().sum(-1).clamp_min(NORM_EPSILON).sqrt()  # (N, L)
    ratios = scale * norms[:, 1:] / norms[:, :-1]
    return (ratios.clamp_min(1) - 1).square().mean(1)


class ResidualQuantizer(nn.Module):
    """Quantises each vector (N, code_dim) with `num_levels` codebooks of `codebook_size` entries in turn:
    level 1 chooses an entry for the vector, level l for the residual the levels above left; the code is the
    sum of the chosen entries.

    Without temperatures the choice is the nearest entry (deterministic, exportable). With a temperature per
    level (training) it is a Gumbel-softmax draw over the negative squared distances, hard in the forward pass
    (the chosen entry exactly) with the relaxed choice's gradient (straight-through), so the reconstruction
    reaches the codebooks and, through the distances, the encoder. Level l's entries start on a sphere of
    radius init_scale * init_decay_weight^(l-1), so deeper levels start as refinements.

    With `update` (training steps) each level also counts the entries the deterministic code uses, summed
    over processes, and, with `dead_code_threshold` > 0, moves entries that code rarely uses onto residuals
    of that level, exactly as `VectorQuantizer` does (kept identical on every process).
    """

    def __init__(
        self,
        codebook_size: int,
        code_dim: int,
        num_levels: int = 3,
        init_scale: float = 1.0,
        init_decay_weight: float = 0.5,
        dead_code_threshold: float = 0.0,
    ) -> None:
        super().__init__()
        if num_levels < 1 or init_scale <= 0 or init_decay_weight <= 0:
            raise ValueError(f"need num_levels >= 1 and positive scales, got {num_levels}, {init_scale}, "
                             f"{init_decay_weight}")  # fmt: skip
        self.codebook_size = codebook_size
        self.code_dim = code_dim
        self.num_levels = num_levels
        self.levels = nn.ModuleList(
            VectorQuantizer(codebook_size, code_dim, dead_code_threshold=dead_code_threshold)
            for _ in range(num_levels)
        )
        with torch.no_grad():
            for depth, level in enumerate(self.levels):
                directions = torch.randn(codebook_size, code_dim)
                radius = init_scale * init_decay_weight**depth
                level.codebook.copy_(directions / directions.norm(dim=1, keepdim=True) * radius)

    @property
    def last_counts(self) -> Tensor | None:
        """How often the deterministic code chose each entry in the last update, levels one after the other,
        (num_levels * codebook_size,) (None before the first update)."""
        counts = [level.last_counts for level in self.levels]
        return None if any(count is None for count in counts) else torch.cat(counts)

    def choose(self, z: Tensor, temperatures: list[float] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The entry chosen at each level for vectors (N, code_dim): indices (N, L), the entries (N, L, D)
        and the logits of each choice, -distances (N, L, K); nearest entries without `temperatures`."""
        with torch.autocast(z.device.type, enabled=False):
            residual = z.float()
            indices, entries, logits = [], [], []
            for depth, level in enumerate(self.levels):
                codebook = level.codebook.float()
                level_logits = -squared_distances(residual, codebook)
                if temperatures is None:
                    index = level_logits.argmax(1)
                    entry = F.embedding(index, codebook)
                else:
                    index, relaxed = gumbel_choice(level_logits, temperatures[depth])
                    # the chosen entry exactly (relaxed - relaxed is 0), with the relaxed choice's gradient
                    entry = F.embedding(index, codebook) + (relaxed - relaxed.detach()) @ codebook
                residual = residual - entry
                indices.append(index)
                entries.append(entry)
                logits.append(level_logits)
            return torch.stack(indices, 1), torch.stack(entries, 1), torch.stack(logits, 1)

    def code(self, z: Tensor) -> Tensor:
        """The deterministic code (the nearest entry at every level, summed) of vectors (N, D) -> (N, D)."""
        return self.choose(z)[1].sum(1)

    @torch.no_grad()
    def _count(self, z: Tensor) -> Tensor:
        """Runs the deterministic code through each level's `VectorQuantizer` update (use counts, dead-entry
        reset) and gives that code, (N, D) -> (N, D). Before the draws, so that no reset changes a codebook
        the backward pass still needs."""
        residual, total = z, torch.zeros_like(z)
        for level in self.levels:
            entry = level(residual, update=True).codes
            residual, total = residual - entry, total + entry
        return total

    def forward(
        self,
        z: Tensor,
        temperatures: list[float] | None = None,
        drop_rate: float = 0.0,
        update: bool = False,
        norm_loss_scale: float = 1.5,
    ) -> ResidualQuantized:
        """Quantises `z` (N, code_dim): Gumbel-softmax draws at `temperatures` (one per level; None: the
        nearest entries), levels dropped from some depth on at `drop_rate`, counts updated with `update`."""
        z = z.float()
        deterministic = self._count(z.detach()) if update else None
        indices, entries, logits = self.choose(z, temperatures)
        if deterministic is None:
            deterministic = self.code(z.detach()) if temperatures is not None else entries.detach().sum(1)
        kept = entries
        if drop_rate > 0:
            kept = entries * depth_keep_mask(z.shape[0], self.num_levels, drop_rate, z.device)[..., None]
        return ResidualQuantized(
            codes=kept.sum(1),
            indices=indices,
            commitment=(z - deterministic).square().sum(1),
            kl=uniform_kl(logits).sum(1),
            norm_loss=depth_norm_loss(entries, norm_loss_scale),
        )
