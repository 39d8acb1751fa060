"""Deterministic, resumable, rank-sharded sampling for map-style datasets.

The sample order and every sample's augmentation seed depend only on (seed, epoch, position),
never on the number of data-loader workers, so a resumed run sees exactly the batches an
uninterrupted run would have seen.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np


class ResumableBatchSampler:
    """Endless batches of ``(index, aug_seed)`` for one rank, starting after ``start`` batches."""

    def __init__(self, num_samples: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, start: int = 0):
        per_rank = num_samples // world_size
        if per_rank < batch_size:
            raise ValueError(
                f"{num_samples} training samples cannot fill one batch of {batch_size} on each of "
                f"{world_size} process(es); lower batch_size_per_gpu or add data"
            )
        self.num_samples, self.batch_size = num_samples, batch_size
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.batches_per_epoch = per_rank // batch_size
        self.start = start

    def epoch_of(self, batch_position: int) -> int:
        return batch_position // self.batches_per_epoch

    def _epoch_indices(self, epoch: int) -> np.ndarray:
        order = np.arange(self.num_samples)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
        # every rank takes a disjoint, equally long slice (the tail that does not divide is left out)
        usable = (self.num_samples // self.world_size) * self.world_size
        return order[:usable][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        pos = self.start
        while True:
            epoch, offset = divmod(pos, self.batches_per_epoch)
            idx = self._epoch_indices(epoch)
            for b in range(offset, self.batches_per_epoch):
                sl = idx[b * self.batch_size : (b + 1) * self.batch_size]
                base = np.random.SeedSequence([self.seed, epoch, self.rank, b]).generate_state(self.batch_size)
                yield [(int(i), int(s)) for i, s in zip(sl, base)]
                pos += 1
