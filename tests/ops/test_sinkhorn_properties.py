"""Hypothesis property tests: any finite logits give a non-negative matrix with exact rows."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torch_mhc import sinkhorn


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 6), batch=st.integers(1, 4), scale=st.floats(0.01, 50.0),
       seed=st.integers(0, 2**31 - 1), iters=st.integers(1, 30))
def test_rows_exact_nonnegative_finite(n, batch, scale, seed, iters):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, n, n, generator=g, dtype=torch.float64) * scale
    m = sinkhorn(logits, iters)
    assert torch.isfinite(m).all() and (m >= 0).all()
    assert torch.allclose(m.sum(-1), torch.ones(batch, n, dtype=torch.float64), atol=1e-9)
    assert (m.sum(-2) <= n + 1e-9).all()


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 5), seed=st.integers(0, 2**31 - 1), shift=st.floats(-100, 100))
def test_invariant_to_row_and_column_shifts(n, seed, shift):
    # Adding a constant to a row or a column scales a row/column of exp(logits): the
    # Sinkhorn limit (and, for the column shift, every iterate) is unchanged.
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, n, generator=g, dtype=torch.float64)
    shifted = logits.clone()
    shifted[:, 0] += shift
    assert torch.allclose(sinkhorn(shifted), sinkhorn(logits), atol=1e-9)
