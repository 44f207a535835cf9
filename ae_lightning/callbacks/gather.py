"""Collecting what every process computed, for callbacks that write or score whole sets."""

from typing import Any

import lightning.pytorch as pl
import torch.distributed as dist


def gather_shares(trainer: "pl.Trainer", local: Any) -> list[Any]:
    """Every process's `local` (any picklable object, e.g. a dict of CPU tensors), in rank order; `[local]`
    on a single process. A collective: call it on every process. The shares travel as objects because they
    may differ in size (Lightning's test and predict samplers repeat no sample to even them out)."""
    if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
        shares: list[Any] = [None] * trainer.world_size
        dist.all_gather_object(shares, local)
        return shares
    return [local]
