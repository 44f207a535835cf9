"""A training order that depends only on a seed and the epoch, so a resumed run reads what an unbroken one
would."""

import os
from collections.abc import Iterator, Sized

import torch
from torch.utils.data import RandomSampler


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
