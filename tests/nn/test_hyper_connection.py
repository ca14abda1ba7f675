import math

import pytest
import torch
from torch import nn

from torch_mhc import HyperConnection, expand_streams, reduce_streams
from torch_mhc.nn.hyper_connection import mhc_bias_init


def randomise(hc: HyperConnection, dyn: float = 0.1, static: float = 0.3) -> HyperConnection:
    """Perturb every coefficient parameter so the dynamic part matters."""
    with torch.no_grad():
        for name, p in hc.named_parameters():
            if not name.startswith("branch."):
                p.add_(torch.randn_like(p) * (dyn if name in ("fn", "theta") else static))
    return hc


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_mhc_mappings_are_in_their_manifolds(n):
    hc = randomise(HyperConnection(nn.Identity(), 24, n, "mhc", layer_index=3))
    x = torch.randn(5, 7, n, 24) * 3
    h_pre, h_post, h_res = hc.mappings(x)
    assert h_pre.shape == (5, 7, n) and h_post.shape == (5, 7, n) and h_res.shape == (5, 7, n, n)
    assert ((h_pre > 0) & (h_pre < 1)).all()
    assert ((h_post > 0) & (h_post < 2)).all()
    assert (h_res >= 0).all()
    assert torch.allclose(h_res.sum(-1), torch.ones(5, 7, n), atol=1e-5)
    assert torch.allclose(h_res.sum(-2), torch.ones(5, 7, n), atol=1e-3)


def _composite(mode: str, layers: int = 64, n: int = 4, C: int = 32):
    x = torch.randn(256, n, C)
    P = torch.eye(n, dtype=torch.float64).expand(256, n, n)
    for i in range(layers):
        hc = randomise(HyperConnection(nn.Identity(), C, n, mode, layer_index=i))
        P = hc.mappings(x)[2].double() @ P
    return P.abs().sum(-1).max().item(), P.abs().sum(-2).max().item()


def test_composite_gain_bounded_for_mhc_and_explodes_for_hc():
    fwd, bwd = _composite("mhc")
    assert fwd <= 1 + 1e-3 and bwd <= 1 + 1e-3
    fwd_hc, bwd_hc = _composite("hc")
    assert fwd_hc > 100 and bwd_hc > 100  # the paper's central claim in miniature


def test_mhc_init_biases():
    b = mhc_bias_init(4, layer_index=5)
    pre = torch.sigmoid(b[:4])
    assert torch.allclose(pre.sum(), torch.tensor(1.0), atol=1e-6)
    assert pre.argmax() == 5 % 4 and math.isclose(pre.max().item(), 2 / 3, rel_tol=1e-6)
    assert torch.allclose(2 * torch.sigmoid(b[4:8]), torch.ones(4))
    hc = HyperConnection(nn.Identity(), 8, 4, "mhc")
    h_res = hc.mappings(torch.randn(3, 4, 8))[2]
    assert torch.allclose(h_res.diagonal(dim1=-2, dim2=-1), torch.full((3, 4), 0.75), atol=1e-6)


@pytest.mark.parametrize("mode", ["mhc", "hc"])
def test_fresh_connection_on_identical_streams_is_a_residual(mode):
    branch = nn.Sequential(nn.Linear(16, 16), nn.Tanh())
    hc = HyperConnection(branch, 16, 4, mode, layer_index=2)
    x = torch.randn(3, 5, 16)
    out = hc(expand_streams(x, 4))
    expected = x + branch(x)
    for i in range(4):
        assert torch.allclose(out[..., i, :], expected, atol=1e-6)


def test_residual_mode_is_bit_for_bit_the_hand_written_block():
    branch = nn.Sequential(nn.LayerNorm(32), nn.Linear(32, 32))
    hc = HyperConnection(branch, 32, 1, "residual")
    x = torch.randn(4, 9, 32)
    assert torch.equal(hc(x.unsqueeze(-2)).squeeze(-2), x + branch(x))


def test_residual_mode_with_several_streams_treats_them_as_one():
    branch = nn.Linear(8, 8)
    hc = HyperConnection(branch, 8, 3, "residual")
    x = torch.randn(2, 3, 8)
    out = hc(x)
    assert torch.allclose(out, x + branch(x.mean(-2)).unsqueeze(-2))
    h_pre, h_post, h_res = hc.mappings(x)
    assert torch.allclose(h_pre, torch.full((2, 3), 1 / 3)) and torch.equal(h_res[0], torch.eye(3))


class TupleBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, h, scale, *, bias=0.0):
        return self.lin(h) * scale + bias, "weights"


@pytest.mark.parametrize("mode", ["mhc", "hc", "residual"])
def test_args_kwargs_and_tuple_outputs_pass_through(mode):
    n = 1 if mode == "residual" else 2
    hc = HyperConnection(TupleBranch(), 8, n, mode)
    out, extra = hc(torch.randn(3, n, 8), 2.0, bias=1.0)
    assert out.shape == (3, n, 8) and extra == "weights"


@pytest.mark.parametrize("mode", ["mhc", "hc"])
def test_gradients_reach_every_coefficient_parameter(mode):
    hc = randomise(HyperConnection(nn.Linear(12, 12), 12, 3, mode))
    hc(torch.randn(4, 3, 12)).pow(2).sum().backward()
    for name, p in hc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_deepseek_v4_round_trip():
    n, C = 4, 16
    fn, base, scale = torch.randn(24, n * C), torch.randn(24), torch.rand(3)
    hc = HyperConnection.from_deepseek_v4(nn.Identity(), fn, base, scale)
    assert hc.n == n and hc.dim == C and hc.hc_eps == 1e-6 and hc.rms_eps == 1e-6
    out = hc.to_deepseek_v4()
    assert torch.equal(out["fn"], fn) and torch.equal(out["base"], base) and torch.equal(out["scale"], scale)
    assert set(dict(hc.named_parameters())) == {"fn", "base", "scale"}


def test_streams_helpers():
    x = torch.randn(2, 5, 7)
    s = expand_streams(x, 3)
    assert s.shape == (2, 5, 3, 7) and s.is_contiguous()
    assert torch.allclose(reduce_streams(s), x, rtol=1e-6, atol=1e-7)
    assert torch.allclose(reduce_streams(s, "sum"), 3 * x)
    with pytest.raises(ValueError, match="n must be"):
        expand_streams(x, 0)
    with pytest.raises(ValueError, match="reduction"):
        reduce_streams(s, "max")


@pytest.mark.parametrize("kwargs, msg", [
    (dict(mode="mhcx"), "unknown mode"),
    (dict(n=0), "n must be"),
    (dict(backend="cuda"), "unknown backend"),
    (dict(dim=0), "dim must be"),
    (dict(sinkhorn_iters=0), "sinkhorn_iters"),
])
def test_constructor_errors(kwargs, msg):
    args = dict(branch=nn.Identity(), dim=8, n=4, mode="mhc")
    args.update(kwargs)
    with pytest.raises(ValueError, match=msg):
        HyperConnection(**args)


@pytest.mark.parametrize("shape", [(2, 3, 8), (2, 4, 9), (8,)])
def test_wrong_stream_shape_says_what_it_expects(shape):
    hc = HyperConnection(nn.Identity(), 8, 4)
    with pytest.raises(ValueError, match=r"expects streams of shape \(\.\.\., 4, 8\)"):
        hc(torch.randn(*shape))
