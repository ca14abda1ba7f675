"""Seeded, stateless batch sampling: batch ``(step, micro)`` is a pure function of the seed.

Because nothing is carried from one batch to the next, a resumed run draws exactly the
batches the uninterrupted run would have drawn, and every connection mode of ``mhc compare``
sees the same data in the same order. Data-parallel ranks shard each batch: the
``batch_size`` windows are drawn as for one process and rank ``r`` of ``w`` takes the
``r``-th contiguous slice, so ``w`` ranks together see exactly what one process sees.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import torch

from .errors import DataError

__all__ = ["BatchSampler", "TRAIN_STREAM", "VAL_STREAM", "PROBE_STREAM"]

TRAIN_STREAM, VAL_STREAM, PROBE_STREAM = 0, 1, 2


class BatchSampler:
    """Random windows of ``seq_len + 1`` tokens from a list of token arrays.

    Args:
        arrays: 1-D token arrays (a window never crosses from one to the next).
        seq_len: tokens per sample; targets are the inputs shifted by one.
        batch_size: samples per batch, over all ranks (must divide by ``world_size``).
        seed: run seed; ``stream`` separates train, validation and probe draws.
        rank, world_size: data-parallel position of this process (it gets its slice).
        vocab_size: if given, every batch is checked to hold ids below it.
        split: name used in error messages ("train", "validation").
    """

    def __init__(self, arrays: List[np.ndarray], seq_len: int, batch_size: int, seed: int,
                 stream: int = TRAIN_STREAM, rank: int = 0, world_size: int = 1,
                 vocab_size: Optional[int] = None, split: str = "train"):
        if seq_len < 1 or batch_size < 1:
            raise DataError(f"seq_len and batch_size must be >= 1, got {seq_len}, {batch_size}")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in [0, {world_size})")
        if batch_size % world_size:
            raise DataError(f"batch size {batch_size} does not split evenly over "
                            f"{world_size} processes; use a multiple of {world_size}")
        self.arrays = [a for a in arrays if len(a) > seq_len]
        if not self.arrays:
            longest = max((len(a) for a in arrays), default=0)
            raise DataError(
                f"sequence length {seq_len} is longer than the data: the {split} split has "
                f"{sum(len(a) for a in arrays):,} tokens (longest piece {longest:,}), and one "
                f"sample needs {seq_len + 1:,}; use a shorter --seq-len or more data")
        self.seq_len, self.batch_size = seq_len, batch_size
        self.seed, self.stream, self.rank, self.world_size = seed, stream, rank, world_size
        self.vocab_size, self.split = vocab_size, split
        self._starts = np.cumsum([0] + [len(a) - seq_len for a in self.arrays])

    @property
    def positions(self) -> int:
        """Number of distinct windows to draw from."""
        return int(self._starts[-1])

    def batch(self, step: int, micro: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets ``(batch_size / world_size, seq_len)`` int64: this rank's slice
        of the batch of this step and micro-batch."""
        rng = np.random.default_rng([self.seed, self.stream, step, micro])
        pos = rng.integers(0, self.positions, size=self.batch_size)
        per = self.batch_size // self.world_size
        pos = pos[self.rank * per:(self.rank + 1) * per]
        which = np.searchsorted(self._starts, pos, side="right") - 1
        rows = np.stack([np.asarray(self.arrays[w][p - self._starts[w]:
                                                   p - self._starts[w] + self.seq_len + 1])
                         for w, p in zip(which, pos)]).astype(np.int64)
        if self.vocab_size is not None:
            top = int(rows.max())
            if top >= self.vocab_size:
                raise DataError(f"the {self.split} data holds token id {top}, but the model's "
                                f"vocabulary has {self.vocab_size} entries; pass "
                                f"--vocab-size {top + 1} or larger")
        t = torch.from_numpy(rows)
        return t[:, :-1], t[:, 1:]
