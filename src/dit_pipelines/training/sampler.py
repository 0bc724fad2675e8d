"""`ShardedEpochSampler`: the data order of a training run, resumable at any batch and split across processes."""

from typing import Iterator

import torch
from torch.utils.data import Sampler


class ShardedEpochSampler(Sampler[int]):
    """Indices of one process's share of each epoch, reshuffled every epoch from (seed, epoch) alone.

    An epoch is a permutation of the dataset cut into global batches of `batch_size * num_processes`; process r
    takes the r-th slice of each. The order depends on nothing but the seed and the epoch, so a run resumed at
    (epoch, batch) sees exactly the batches an uninterrupted run would (`set_position`), and no global RNG is used.
    With `epoch_keys` it yields (epoch, index) pairs, for datasets whose samples vary by epoch (random clip starts).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        num_processes: int = 1,
        epoch_keys: bool = False,
    ):
        self.num_samples, self.batch_size, self.seed, self.epoch_keys = num_samples, batch_size, seed, epoch_keys
        self.rank, self.num_processes = rank, num_processes
        self.batches_per_epoch = num_samples // (batch_size * num_processes)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"The dataset has {num_samples} samples, fewer than one batch of {batch_size} x {num_processes} "
                "processes; lower --train_batch_size."
            )
        self.epoch, self.start_batch = 0, 0

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        step = self.batch_size * self.num_processes
        for b in range(self.start_batch, self.batches_per_epoch):
            start = b * step + self.rank * self.batch_size
            indices = order[start : start + self.batch_size].tolist()
            yield from ((self.epoch, i) for i in indices) if self.epoch_keys else indices
