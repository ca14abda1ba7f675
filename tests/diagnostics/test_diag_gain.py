import math

import pytest
import torch

from torch_mhc import sinkhorn
from torch_mhc.diagnostics import amax_gain, composite_products, gain_profile


def test_amax_gain_rows_and_columns():
    h = torch.tensor([[1.0, -2.0], [0.5, 0.25]])
    fwd, bwd = amax_gain(h)
    assert fwd.item() == 3.0  # max |row sum|: |1| + |-2|
    assert bwd.item() == 2.25  # max |col sum|: |-2| + |0.25|


def test_composite_is_later_layers_times_earlier_per_token():
    torch.manual_seed(1)
    hs = [torch.randn(5, 3, 3) for _ in range(4)]  # 5 tokens, 4 layers
    prods = composite_products(hs)
    assert all(p.dtype == torch.float64 for p in prods)
    manual = hs[0].double()
    for h in hs[1:]:
        manual = h.double() @ manual
    assert torch.allclose(prods[-1], manual)
    assert torch.allclose(prods[1][2], hs[1][2].double() @ hs[0][2].double())


def test_profile_max_and_mean_over_tokens():
    # token 0: H = 2I (gain 2 per layer), token 1: H = I
    h = torch.stack([2 * torch.eye(2), torch.eye(2)])
    prof = gain_profile([h, h, h])
    assert prof["fwd_max"] == [2.0, 2.0, 2.0]
    assert prof["comp_fwd_max"] == [2.0, 4.0, 8.0]
    assert prof["comp_bwd_mean"] == [1.5, 2.5, 4.5]


def test_residual_is_exactly_one():
    prof = gain_profile(None, num_layers=6)
    assert all(v == [1.0] * 6 for v in prof.values())
    assert len(prof) == 12  # single layer, layers 1..l, layers l..L; 4 statistics each
    with pytest.raises(ValueError):
        gain_profile(None)


def test_doubly_stochastic_products_keep_gain_one():
    torch.manual_seed(0)
    hs = [sinkhorn(3 * torch.randn(16, 4, 4), 20) for _ in range(30)]
    prof = gain_profile(hs)
    # rows are exact after the final row step; columns approximate (paper, Fig. 7a)
    assert max(prof["comp_fwd_max"]) == pytest.approx(1.0, abs=1e-5)
    assert max(prof["comp_bwd_max"]) == pytest.approx(1.0, abs=0.05)


def test_unconstrained_products_can_explode():
    h = torch.tensor([[1.2, 0.1], [0.1, 1.2]]).expand(3, 2, 2)
    prof = gain_profile([h] * 20)
    assert prof["comp_fwd_max"][-1] == pytest.approx(1.3 ** 20)
    assert math.log(prof["comp_fwd_max"][-1]) > 5


def test_composite_to_output_is_the_papers_direction():
    from torch_mhc.diagnostics.gain import composite_products, composite_to_output, gain_profile
    hs = [torch.randn(5, 3, 3, dtype=torch.float64) for _ in range(4)]
    q = composite_to_output(hs)
    assert torch.allclose(q[0], composite_products(hs)[-1])  # both end in the full product
    assert torch.allclose(q[2], hs[3] @ hs[2])  # Q_3 = H^(4) H^(3)
    prof = gain_profile(hs)
    assert len(prof["out_fwd_max"]) == 4
    assert prof["out_fwd_max"][0] == pytest.approx(prof["comp_fwd_max"][-1])


def test_paper_gains_token_mean_per_sequence_of_layers_l_to_L():
    from torch_mhc.diagnostics import paper_gains
    torch.manual_seed(0)
    B, T, n, L = 3, 5, 4, 4
    hs = [torch.randn(B, T, n, n, dtype=torch.float64) for _ in range(L)]
    out = paper_gains(hs)
    for l in range(L):  # direct: Q_l = H^(L) ... H^(l), per token, then per-sequence mean
        q = hs[L - 1]
        for h in reversed(hs[l:L - 1]):
            q = q @ h
        fwd = q.abs().sum(-1).amax(-1).mean(-1)   # (B,)
        bwd = q.abs().sum(-2).amax(-1).mean(-1)
        assert out["comp_fwd_max"][l] == pytest.approx(float(fwd.max()))
        assert out["comp_fwd_mean"][l] == pytest.approx(float(fwd.mean()))
        assert out["comp_bwd_max"][l] == pytest.approx(float(bwd.max()))
    assert out["comp_fwd_peak"] == max(out["comp_fwd_max"])
    # the token mean is below the token max (the current convention) unless all are equal
    from torch_mhc.diagnostics import gain_profile
    assert max(out["comp_fwd_max"]) < max(gain_profile(hs)["out_fwd_max"])
    res = paper_gains(None, 3)
    assert res["comp_fwd_max"] == [1.0] * 3 and res["comp_bwd_peak"] == 1.0


def test_paper_gains_doubly_stochastic_is_one():
    from torch_mhc import sinkhorn
    from torch_mhc.diagnostics import paper_gains
    hs = [sinkhorn(torch.randn(2, 6, 4, 4, dtype=torch.float64), 200) for _ in range(6)]
    out = paper_gains(hs)
    assert out["comp_fwd_peak"] == pytest.approx(1.0, abs=1e-6)
    assert out["comp_bwd_peak"] == pytest.approx(1.0, abs=1e-6)


def test_step_stats_ratio_and_frobenius():
    from torch import nn
    from torch_mhc.diagnostics import hres_frobenius, step_stats
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    a.weight.grad = torch.full((3, 3), 1.0)
    b.weight.grad = torch.full((3, 3), 2.0)
    a.bias.grad = b.bias.grad = None
    out = step_stats([a, nn.Identity(), b])
    assert float(out["grad_ratio_last_first"]) == pytest.approx(2.0)
    assert "hres_fro_mean" not in out
    eye = torch.eye(4).expand(2, 3, 4, 4)
    assert float(hres_frobenius(eye)) == pytest.approx(2.0)
    a.last_mappings = (None, None, eye)
    b.last_mappings = (None, None, torch.full((2, 3, 4, 4), 0.25))
    out = step_stats([a, b])
    assert float(out["hres_fro_mean"]) == pytest.approx(1.5)
