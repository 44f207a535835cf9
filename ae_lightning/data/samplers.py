"""A training order that depends only on a seed and the epoch, so a resumed run reads what an unbroken one
would."""

import os
from collections.abc import Iterator, Sized

import torch
from torch.utils.data import DistributedSampler, RandomSampler


def shuffle_seed(default: int) -> int:
    """The seed of the training order: `seed_everything`'s (`PL_GLOBAL_SEED`, which Lightning's own
    DistributedSampler uses under DDP too) when it was called, else `default`."""
    return int(os.environ.get("PL_GLOBAL_SEED", default))


class EpochShuffleSampler(RandomSampler):
    """A shuffled pass over the data whose permutation is a function of (seed, epoch) only.

    torch's RandomSampler draws each epoch's order from the global random state, which a checkpoint does
    not hold, so a run resumed at epoch k would read other batches than the run that never stopped.
    Lightning calls `set_epoch` at every epoch start (as for a DistributedSampler). Under DDP Lightning
    replaces this sampler by a DistributedSampler (it is a RandomSampler, so shuffling is kept), which is
    seeded the same way.
    """

    def __init__(self, data_source: Sized, seed: int) -> None:
        super().__init__(data_source)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


class ResidentBatches(DistributedSampler):
    """Whole batches of indices, as tensors, for a dataset that indexes by tensor (resident data).

    The order is that of the DataLoader path: the permutation of (seed, epoch) when shuffling, and under DDP
    rank r takes positions r, r + world, ... of it. With `even_shares` (training) the permutation is padded
    from its start, as DistributedSampler does, so every rank takes the same number of steps; without it
    (validation, test) no image is repeated and shares may differ by one. With `steps_per_call` K > 1 each
    item is a list of K batches (fewer at the end of an epoch), which the model trains on in one call.
    A DistributedSampler, so Lightning leaves it in place under DDP.
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
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.batch_size = batch_size
        self.even_shares = even_shares
        self.steps_per_call = steps_per_call

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

    def _batches(self) -> int:
        size = len(self.dataset)
        share = self.num_samples if self.even_shares else len(range(self.rank, size, self.num_replicas))
        return -(-share // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor | list[torch.Tensor]]:
        batches = self.share().split(self.batch_size)
        if self.steps_per_call == 1:
            yield from batches
        else:
            for start in range(0, len(batches), self.steps_per_call):
                yield list(batches[start : start + self.steps_per_call])

    def __len__(self) -> int:
        return -(-self._batches() // self.steps_per_call)
