"""A training order that depends only on a seed and the epoch, and a loader that knows its place in it, so a
run resumed at an epoch's start or in its middle reads what an unbroken one would."""

import os
from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler

from ae_lightning.multistep import calls, group_batches


def shuffle_seed(default: int) -> int:
    """The seed of the training order: `seed_everything`'s (`PL_GLOBAL_SEED`) when it was called, else
    `default`."""
    return int(os.environ.get("PL_GLOBAL_SEED", default))


class TrainingOrder(DistributedSampler):
    """This rank's share of one pass over a dataset, whose order is a function of (seed, epoch) only.

    torch's RandomSampler draws each epoch's order from the global random state, which a checkpoint does
    not hold, so a run resumed at epoch k would read other batches than the run that never stopped. Here
    the permutation comes from a generator seeded with seed + epoch (Lightning calls `set_epoch` at every
    epoch start). Under DDP rank r takes positions r, r + world, ... of it; with `even_shares` (training)
    the permutation is padded from its start, as DistributedSampler does, so every rank takes the same
    number of steps; without it (validation, test) no item is repeated and shares may differ by one. A
    DistributedSampler, so Lightning leaves it in place under DDP. `resume_at(n)` makes the next pass skip
    its first n items (a run resumed mid-epoch).
    """

    def __init__(
        self,
        dataset: Sized,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        even_shares: bool = True,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.even_shares = even_shares
        self._start = 0

    def share(self) -> torch.Tensor:
        """This rank's indices for the current epoch, (n,) int64."""
        size = len(self.dataset)
        if self.shuffle:
            order = torch.randperm(size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(size)
        if self.even_shares and self.total_size > size:
            order = order.repeat(-(-self.total_size // size))[: self.total_size]
        return order[self.rank :: self.num_replicas]

    def resume_at(self, items: int) -> None:
        """The next pass starts at item `items` of the epoch (once)."""
        self._start = items

    def _remaining_share(self) -> torch.Tensor:
        start, self._start = self._start, 0
        return self.share()[start:]

    def __iter__(self) -> Iterator[int]:
        yield from self._remaining_share().tolist()

    def __len__(self) -> int:
        return (
            self.num_samples
            if self.even_shares
            else len(range(self.rank, len(self.dataset), self.num_replicas))
        )


class ResidentBatches(TrainingOrder):
    """Whole batches of indices, as tensors, for a dataset that indexes by tensor (resident data).

    The order and DDP shares are those of the DataLoader path (`TrainingOrder`). With `steps_per_call`
    K > 1 each item is a list of K batches (fewer at the end of an epoch; `multistep.group_batches`), which
    the module trains on in one call. `resume_at` counts items (batches, or lists of K batches). With
    `device`, an epoch's indices are copied there once, as one tensor, rather than batch by batch.
    """

    def __init__(
        self,
        dataset: Sized,
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        even_shares: bool = True,
        steps_per_call: int = 1,
        device: torch.device | None = None,
    ) -> None:
        super().__init__(dataset, num_replicas, rank, shuffle=shuffle, seed=seed, even_shares=even_shares)
        self.batch_size = batch_size
        self.steps_per_call = steps_per_call
        self.device = device

    def __iter__(self) -> Iterator[torch.Tensor | list[torch.Tensor]]:
        start, self._start = self._start, 0
        share = self.share() if self.device is None else self.share().to(self.device)
        items = group_batches(share.split(self.batch_size), self.steps_per_call)
        for position, item in enumerate(items):
            if position >= start:
                yield item

    def __len__(self) -> int:
        return calls(-(-super().__len__() // self.batch_size), self.steps_per_call)


def resident_batches(
    dataset: Sized,
    trainer: Any,
    batch_size: int,
    split_seed: int,
    train: bool,
    steps_per_call: int = 1,
    device: torch.device | None = None,
) -> ResidentBatches:
    """The resident path's sampler of a split: this rank's share (of `trainer`'s world, one process without
    a trainer); training shuffled by (seed, epoch), in even shares and K batches per item; evaluation in
    order, no item repeated; indices on `device` (that of the data)."""
    world_size, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
    return ResidentBatches(
        dataset,
        batch_size=batch_size,
        num_replicas=world_size,
        rank=rank,
        shuffle=train,
        seed=shuffle_seed(split_seed),
        even_shares=train,
        steps_per_call=steps_per_call if train else 1,
        device=device,
    )


class ResumableLoader(DataLoader):
    """A DataLoader over a `TrainingOrder` that can be saved in the middle of an epoch and resumed there.

    Lightning saves the `state_dict` of a stateful training loader in every checkpoint and gives it back to
    `load_state_dict` when a run resumes. The state is the epoch and how many items (batches) of it were
    handed out; a resumed pass of that same epoch skips them, in the sampler, without loading them. A state
    from an epoch that has ended (its next epoch is another) skips nothing.
    """

    sampler: TrainingOrder

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, TrainingOrder):
            raise TypeError(
                f"ResumableLoader needs a TrainingOrder sampler, got {type(self.sampler).__name__}"
            )
        self._handed_out = 0
        self._resume: tuple[int, int] | None = None  # (epoch, items) of a loaded state

    def __iter__(self) -> Iterator[Any]:
        # a generator: the pass (and its workers' prefetching) starts at the first batch, after Lightning
        # has set the sampler's epoch
        position = 0
        if self._resume is not None:
            (epoch, position), self._resume = self._resume, None
            if epoch != self.sampler.epoch:
                position = 0
        # the sampler counts indices when the loader batches them, else whole items
        self.sampler.resume_at(position * (self.batch_size or 1))
        self._handed_out = position
        for item in super().__iter__():
            self._handed_out += 1
            yield item

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "items": self._handed_out}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._resume = (int(state_dict["epoch"]), int(state_dict["items"]))
