import numpy as np
import pytest
import torch

from torch_mhc.data import BatchSampler, DataError


def test_batches_are_a_function_of_seed_step_micro_rank():
    data = [np.arange(1000)]
    s = BatchSampler(data, seq_len=16, batch_size=4, seed=3)
    x1, y1 = s.batch(5)
    x2, y2 = BatchSampler(data, seq_len=16, batch_size=4, seed=3).batch(5)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, s.batch(6)[0])
    assert not torch.equal(x1, s.batch(5, micro=1)[0])
    assert not torch.equal(x1, BatchSampler(data, 16, 4, seed=4).batch(5)[0])
    halves = [BatchSampler(data, 16, 4, seed=3, rank=r, world_size=2).batch(5)[0]
              for r in (0, 1)]
    assert torch.equal(torch.cat(halves), x1)  # ranks split the one-process batch
    with pytest.raises(DataError, match="does not split evenly"):
        BatchSampler(data, 16, 3, seed=3, rank=0, world_size=2)
    assert x1.dtype == torch.int64 and x1.shape == (4, 16)
    assert torch.equal(x1[:, 1:], y1[:, :-1])  # targets are inputs shifted by one
    assert torch.equal(y1, x1 + 1)  # arange data


def test_windows_never_cross_pieces():
    data = [np.zeros(20, dtype=np.int64), np.ones(30, dtype=np.int64)]
    s = BatchSampler(data, seq_len=10, batch_size=64, seed=0)
    for step in range(5):
        x, y = s.batch(step)
        full = torch.cat([x, y[:, -1:]], 1)
        assert bool(((full == 0).all(1) | (full == 1).all(1)).all())


def test_sequence_longer_than_data():
    with pytest.raises(DataError, match="sequence length 100 is longer than the data"):
        BatchSampler([np.arange(50)], seq_len=100, batch_size=2, seed=0, split="validation")


def test_vocab_check():
    s = BatchSampler([np.full(100, 300)], seq_len=8, batch_size=2, seed=0, vocab_size=256)
    with pytest.raises(DataError, match="--vocab-size 301"):
        s.batch(0)
