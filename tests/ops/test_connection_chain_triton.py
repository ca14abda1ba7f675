"""The backward chain of fused connections (ops/connection.py, "Backward chain"): connection
l's dx pass also does connection l-1's post-res backward, and l-1's pre half folds dH_res
into its pass over x and dh. Same gradients as without the chain and as the reference, and
a fall-back to l-1's own post-res backward whenever the gradient reaching it is not l's dx.

Runs in Triton's interpreter on CPU (tests/ops/conftest.py) and compiled on CUDA when present.
The Triton chain runs with bf16 streams and n <= 4 (the dx4 kernel); float64 goes through
the kernels' PyTorch twins, chained the same way, for gradcheck.
"""
import copy
import importlib

import pytest
import torch
from torch import nn

pytest.importorskip("triton")

from torch_mhc import HyperConnection  # noqa: E402
from torch_mhc.nn.recompute import stream_recompute  # noqa: E402
from torch_mhc.testing import rel_error  # noqa: E402

connection = importlib.import_module("torch_mhc.ops.connection")
post_res = importlib.import_module("torch_mhc.ops.post_res")

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _stack(n, C, depth, dtype=torch.bfloat16, seed=0):
    torch.manual_seed(seed)
    hcs = []
    for _ in range(depth):
        hc = HyperConnection(nn.Linear(C, C), C, n, backend="triton", rms_eps=1e-6).to(DEV)
        with torch.no_grad():
            hc.fn.normal_(0, 0.1)
            hc.base.normal_(0, 1.0)
            hc.scale.uniform_(0.5, 1.5)
        hc.branch.to(dtype)
        if dtype == torch.float64:
            hc.double()
        hcs.append(hc)
    return hcs


@pytest.fixture
def post_res_calls(monkeypatch):
    """How many post-res backward passes ran (per implementation)."""
    calls = {"triton": 0, "torch": 0}
    for impl in calls:
        fns = post_res._POST_IMPL[impl]

        def counted(*a, _f=fns[1], _impl=impl, **k):
            calls[_impl] += 1
            return _f(*a, **k)
        monkeypatch.setitem(post_res._POST_IMPL, impl, (fns[0], counted, fns[2]))
    return calls


def _run(hcs, x, w, chain=True, backend="triton", side=None):
    """Gradients of ``<stack(x), w>`` (plus ``side(middle stream)``) to x and all parameters."""
    s, mid = x, None
    for k, hc in enumerate(hcs):
        hc.backend = backend
        s = hc(s)
        if not chain:
            s.__dict__.pop(connection._CHAIN_ATTR, None)
        if k == len(hcs) // 2 - 1:
            mid = s
            if side is not None:
                s, extra = side(s)
    loss = (s.float() * w).sum()
    if side is not None:
        loss = loss + extra
    leaves = [x] + [p for hc in hcs for p in hc.parameters()]
    return torch.autograd.grad(loss, leaves), mid


@pytest.mark.parametrize("n,C", [(4, 48), (3, 40), (2, 24)])
def test_chain_matches_unchained_and_reference(n, C, post_res_calls):
    hcs = _stack(n, C, 3)
    x = torch.randn(2, 7, n, C, device=DEV).bfloat16().requires_grad_()  # 14 tokens: partial tiles
    w = torch.randn(2, 7, n, C, device=DEV)
    g_chain, _ = _run(hcs, x, w)
    assert post_res_calls["triton"] == 1  # only the last connection's: the others are chained
    g_plain, _ = _run(hcs, x, w, chain=False)
    assert post_res_calls["triton"] == 4
    g_ref, _ = _run(hcs, x, w, backend="torch")
    for a, b, c in zip(g_chain, g_plain, g_ref):
        # the same bf16 dx values, summed in another order
        assert rel_error(a, b) < 1e-4, rel_error(a, b)
        assert rel_error(a, c) < 5e-2, rel_error(a, c)


def _consumer(s):
    return s, (s.float() * 0.3).sum()


def _hook(s):
    s.register_hook(lambda g: g * 2)
    return s, 0.0


@pytest.mark.parametrize("side", [_consumer, _hook], ids=["other consumer", "hook"])
def test_chain_falls_back_when_the_gradient_is_not_dx(side, post_res_calls):
    """The middle stream also feeds the loss (autograd adds a second gradient) or a hook
    replaces its gradient: the connection before it runs its own post-res backward."""
    n, C = 4, 64
    hcs = _stack(n, C, 2)
    x = torch.randn(9, n, C, device=DEV).bfloat16().requires_grad_()
    w = torch.randn(9, n, C, device=DEV)
    g_chain, _ = _run(hcs, x, w, side=side)
    assert post_res_calls["triton"] == 2
    g_plain, _ = _run(hcs, x, w, chain=False, side=side)
    # the reference in float64 on the same bf16 values (the summed d scale cancels a lot:
    # bf16 runs of either backend are ~5e-2 from it there)
    x64 = x.detach().double().requires_grad_()
    g_ref, _ = _run([copy.deepcopy(hc).double() for hc in hcs], x64, w.double(),
                    backend="torch", side=side)
    for a, b, c in zip(g_chain, g_plain, g_ref):
        assert rel_error(a, b) < 1e-6, rel_error(a, b)
        assert rel_error(a, c) < 8e-2, rel_error(a, c)


def test_chain_under_stream_recompute(post_res_calls):
    """Streams dropped and rebuilt in backward (Eq. 20): still chained, same gradients."""
    n, C = 4, 40
    hcs = _stack(n, C, 4)
    x = torch.randn(10, n, C, device=DEV).bfloat16().requires_grad_()
    w = torch.randn(10, n, C, device=DEV)
    g, _ = _run(hcs, x, w)
    assert post_res_calls["triton"] == 1
    with stream_recompute(2):
        g_rc, _ = _run(hcs, x, w)
    assert post_res_calls["triton"] == 2
    for a, b in zip(g, g_rc):
        assert rel_error(a, b) < 1e-6, rel_error(a, b)


def test_chain_gradcheck_fp64(post_res_calls):
    """float64: the PyTorch twins of the kernels, chained by the same autograd glue."""
    n, C = 2, 3
    hcs = _stack(n, C, 3, dtype=torch.float64)
    for hc in hcs:
        hc.sinkhorn_iters = 5
    x = torch.randn(2, n, C, dtype=torch.float64, device=DEV, requires_grad=True)
    params = [p for hc in hcs for p in (hc.fn, hc.base, hc.scale, hc.branch.weight)]

    def f(x_, *p):
        return hcs[2](hcs[1](hcs[0](x_)))

    f(x).sum().backward()
    assert post_res_calls["torch"] == 1  # chained in float64 too
    assert torch.autograd.gradcheck(f, (x, *params), atol=1e-6)


@pytest.mark.parametrize("extra", ["pre", "post", "res"])
def test_chained_mappings_with_other_consumers_fp64(extra, post_res_calls):
    """A chained connection's H_pre / H_post / H_res also feed the loss: autograd's
    gradient for them is added to the partial sums handed along the chain."""
    n, C, T = 3, 5, 4
    x = torch.randn(T, n, C, dtype=torch.float64, device=DEV, requires_grad=True)
    ws = [torch.randn(T, n, n, dtype=torch.float64, device=DEV) for _ in range(2)]
    params = []
    for _ in range(2):
        fn = (torch.randn((n + 2) * n, n * C, dtype=torch.float64, device=DEV) * 0.1)
        base = torch.randn((n + 2) * n, dtype=torch.float64, device=DEV)
        scale = torch.rand(3, dtype=torch.float64, device=DEV) + 0.5
        lin = nn.Linear(C, C).double().to(DEV)
        params += [fn.requires_grad_(), base.requires_grad_(), scale.requires_grad_(), lin.weight]

    def f(x_, *p):
        s, loss = x_, 0.0
        for k in range(2):
            fn, base, scale, weight = p[4 * k:4 * k + 4]
            h, hp, hq, hr, link = connection.connection_pre(s, fn, base, scale, 8, 1e-6, 0.0)
            s = connection.connection_post(s, h @ weight.t(), hq, hr, link)
            m = {"pre": hp, "post": hq, "res": hr}[extra]
            loss = loss + (m.unsqueeze(-1) * ws[k] if m.dim() == 2 else m * ws[k]).sum()
        return (s * s).sum() + loss

    f(x, *params).backward()
    assert post_res_calls["torch"] == 1
    assert torch.autograd.gradcheck(f, (x, *params), atol=1e-6)


def test_backward_chain_switch(post_res_calls):
    """``backward_chain(False)``: no link left on the output, every connection runs its own
    post-res backward, same gradients; the switch is restored on exit."""
    n, C = 4, 32
    hcs = _stack(n, C, 3)
    x = torch.randn(6, n, C, device=DEV).bfloat16().requires_grad_()
    w = torch.randn(6, n, C, device=DEV)
    g_on, _ = _run(hcs, x, w)
    assert post_res_calls["triton"] == 1
    before = connection.BACKWARD_CHAIN
    with connection.backward_chain(False):
        assert connection._CHAIN_ATTR not in hcs[0](x).__dict__
        g_off, _ = _run(hcs, x, w)
    assert connection.BACKWARD_CHAIN == before
    assert post_res_calls["triton"] == 1 + 3
    for a, b in zip(g_on, g_off):
        assert rel_error(a, b) < 1e-4, rel_error(a, b)
