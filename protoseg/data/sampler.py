"""The training batches of a run: which samples, with which augmentation seeds, at each iteration."""
from __future__ import annotations

import numpy as np


class TrainBatches:
    """Batch sampler of (index, sample_seed) pairs for iterations [start, end).

    Each epoch is a permutation drawn from (seed, epoch) and each sample's
    augmentation seed is (seed, epoch, position), so the data of iteration i
    depends on nothing but i: a resumed run sees exactly the batches that an
    uninterrupted one would, whatever the worker count. `batch_size` is the
    global batch; process `rank` of `world` takes its slice [rank::world].
    """

    def __init__(self, size: int, batch_size: int, seed: int, start: int, end: int,
                 rank: int = 0, world: int = 1):
        self.size, self.batch_size, self.seed, self.start, self.end = size, batch_size, seed, start, end
        self.rank, self.world = rank, world
        self._perm: tuple[int, np.ndarray] | None = None

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.size))
        return self._perm[1]

    def __iter__(self):
        for it in range(self.start, self.end):
            batch = []
            for pos in range(it * self.batch_size, (it + 1) * self.batch_size):
                epoch, i = divmod(pos, self.size)
                batch.append((int(self._permutation(epoch)[i]), (self.seed, epoch, i)))
            yield batch[self.rank::self.world]

    def __len__(self):
        return self.end - self.start
