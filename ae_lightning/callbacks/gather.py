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


def to_host(tensor: Tensor) -> Tensor:
    """`tensor` on the CPU, copied from a GPU without making the host wait (into pinned memory, as the copy
    is queued): read it only after `wait_for_copies`. A CPU tensor is returned as it is."""
    return tensor.detach().to("cpu", non_blocking=True)


def wait_for_copies(device: torch.device) -> None:
    """Waits until the copies `to_host` queued from `device` (a GPU) are done: at an epoch's end, not in a
    step. Nothing to wait for from a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Collected:
    """Tensors a callback collects batch by batch (copied to the CPU as float, without a wait for the device
    in the batch), joined over the batches and, by `gather`, over every process in rank order."""

    def __init__(self) -> None:
        self._parts: dict[str, list[Tensor]] = {}

    def add(self, parts: dict[str, Tensor]) -> None:
        for name, value in parts.items():
            self._parts.setdefault(name, []).append(to_host(value.float()))

    def gather(self, trainer: "pl.Trainer") -> dict[str, Tensor]:
        """Everything collected by every process, by name (empty when nothing was); clears this process's
        parts. A collective: call it on every process."""
        wait_for_copies(trainer.strategy.root_device)
        local = {name: torch.cat(values) for name, values in self._parts.items()}
        self._parts = {}
        shares = [share for share in gather_shares(trainer, local) if share]
        return {name: torch.cat([share[name] for share in shares]) for name in shares[0]} if shares else {}
