import math

import pytest
import torch

from torch_mhc.diagnostics import depth_ratio, find_spikes, hres_stats, mean_matrix, range_stats


def test_identity_and_uniform():
    s = hres_stats(torch.eye(4).expand(7, 4, 4))
    assert s["row_err_max"] == 0 and s["col_err_max"] == 0 and s["dist_identity"] == 0
    assert s["entropy"] == 0 and s["diag_mean"] == 1
    u = hres_stats(torch.full((4, 4), 0.25))
    assert u["entropy"] == pytest.approx(math.log(4))
    assert u["row_err_max"] == pytest.approx(0, abs=1e-12)
    assert u["dist_identity"] == pytest.approx(torch.linalg.matrix_norm(
        torch.full((4, 4), 0.25) - torch.eye(4)).item(), rel=1e-6)


def test_not_doubly_stochastic():
    h = torch.tensor([[1.5, -0.5], [0.0, 2.0]])
    s = hres_stats(h)
    assert s["row_err_max"] == pytest.approx(1.0)  # row 2 sums to 2
    assert s["col_err_max"] == pytest.approx(0.5)  # col 2 sums to 1.5, col 1 to 1.5
    assert s["min_entry"] == -0.5


def test_ranges_and_mean_matrix():
    r = range_stats(torch.tensor([[0.1, 0.9], [0.5, 0.3]]))
    assert r["min"] == pytest.approx(0.1) and r["max"] == pytest.approx(0.9)
    assert mean_matrix(torch.stack([torch.eye(2), torch.zeros(2, 2)])) == [[0.5, 0], [0, 0.5]]


def test_depth_ratio_and_spikes():
    assert depth_ratio([2.0, 3.0, 8.0]) == 4.0
    assert depth_ratio([0.0, 1.0]) is None and depth_ratio([]) is None
    g = [1.0] * 30 + [10.0] + [1.0] * 5 + [float("nan")]
    assert find_spikes(g) == [30, 36]
