"""Collecting what every process computed, for callbacks that write or score whole sets."""

from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from torch import Tensor


def gather_shares(trainer: "pl.Trainer", local: Any) -> list[Any]:
    """Every process's `local` (any picklable object, e.g. a dict of CPU tensors), in rank order; `[local]`
    on a single process. A collective: call it on every process. The shares travel as objects because they
    may differ in size (Lightning's test and predict samplers repeat no sample to even them out)."""
    if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
        shares: list[Any] = [None] * trainer.world_size
        dist.all_gather_object(shares, local)
        return shares
    return [local]


class Collected:
    """Tensors a callback collects batch by batch (on the CPU, as float), joined over the batches and, by
    `gather`, over every process in rank order."""

    def __init__(self) -> None:
        self._parts: dict[str, list[Tensor]] = {}

    def add(self, parts: dict[str, Tensor]) -> None:
        for name, value in parts.items():
            self._parts.setdefault(name, []).append(value.detach().float().cpu())

    def gather(self, trainer: "pl.Trainer") -> dict[str, Tensor]:
        """Everything collected by every process, by name (empty when nothing was); clears this process's
        parts. A collective: call it on every process."""
        local = {name: torch.cat(values) for name, values in self._parts.items()}
        self._parts = {}
        shares = [share for share in gather_shares(trainer, local) if share]
        return {name: torch.cat([share[name] for share in shares]) for name in shares[0]} if shares else {}
