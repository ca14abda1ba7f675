"""Fused Triton coefficient kernels (ops/coefficients.py) vs the PyTorch reference.

On a machine without CUDA the kernels run on CPU tensors in Triton's interpreter: the
module fixture in ``tests/ops/conftest.py`` sets ``TRITON_INTERPRET=1`` for the ``*_triton`` modules (the kernels are compiled
lazily per mode, so it does not matter that ``torch_mhc`` was imported before); with CUDA
the same tests run the compiled kernels on the GPU.
"""
import pytest
import torch

pytest.importorskip("triton")

from torch_mhc.testing import rel_error  # noqa: E402
from torch_mhc.ops.coefficients import mhc_coefficients, mhc_coefficients_reference  # noqa: E402

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"


def _params(n, C, dtype=torch.float32):
    N = (n + 2) * n
    fn = (torch.randn(N, n * C, device=DEV) * 0.1).to(dtype).requires_grad_()
    base = torch.randn(N, device=DEV).to(dtype).requires_grad_()
    scale = (torch.rand(3, device=DEV) + 0.5).to(dtype).requires_grad_()  # U(0.5, 1.5)
    return fn, base, scale


def _compare(x, fn, base, scale, hc_eps, rms_eps, tol_out, tol_grad, iters=20):
    params = [x, fn, base, scale]
    out = mhc_coefficients(x, fn, base, scale, iters, rms_eps, hc_eps, backend="triton")
    ref = mhc_coefficients_reference(x, fn, base, scale, iters, rms_eps, hc_eps)
    for o, r in zip(out, ref):
        assert o.dtype == torch.float32 and o.shape == r.shape
        assert torch.isfinite(o).all()
        assert rel_error(o, r) < tol_out, (rel_error(o, r), tol_out)
    ws = [torch.randn_like(r) for r in ref]  # random cotangents for all three mappings
    g = torch.autograd.grad(sum((o * w).sum() for o, w in zip(out, ws)), params)
    g_ref = torch.autograd.grad(sum((r * w).sum() for r, w in zip(ref, ws)), params)
    for name, a, b in zip(("x", "fn", "base", "scale"), g, g_ref):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert rel_error(a, b) < tol_grad, (name, rel_error(a, b), tol_grad)


@pytest.mark.parametrize("n,C,T", [(1, 48, 37), (2, 100, 37), (3, 40, 11), (4, 48, 37), (4, 100, 19),
                                   (8, 24, 13)])
@pytest.mark.parametrize("hc_eps,rms_eps", [(0.0, 1e-20), (1e-6, 1e-6)])
def test_fp32_forward_backward(n, C, T, hc_eps, rms_eps):
    x = (torch.randn(T, n, C, device=DEV) * 2).requires_grad_()
    fn, base, scale = _params(n, C)
    _compare(x, fn, base, scale, hc_eps, rms_eps, 1e-5, 2e-5)


@pytest.mark.parametrize("iters", [1, 2, 3])
@pytest.mark.parametrize("hc_eps", [0.0, 1e-6])
def test_few_sinkhorn_iterations(iters, hc_eps):
    """One to three Sinkhorn steps (the token backward's first and last saved steps meet)
    give the reference's mappings and gradients."""
    n, C, T = 4, 48, 21
    x = (torch.randn(T, n, C, device=DEV) * 2).requires_grad_()
    fn, base, scale = _params(n, C)
    _compare(x, fn, base, scale, hc_eps, 1e-6, 1e-5, 2e-5, iters=iters)


@pytest.mark.parametrize("n,C", [(4, 100), (2, 48)])
@pytest.mark.parametrize("hc_eps", [0.0, 1e-6])
def test_bf16_streams(n, C, hc_eps):
    x = torch.randn(3, 7, n, C, device=DEV).bfloat16().requires_grad_()  # leading dims kept
    fn, base, scale = _params(n, C)
    # mappings: fp32 math on the same bf16 values (fn split hi/lo on the tensor cores)
    _compare(x, fn, base, scale, hc_eps, 1e-6, 1e-4, 1e-2)


def test_under_autocast():
    n, C = 4, 48
    x = torch.randn(21, n, C, device=DEV).requires_grad_()
    fn, base, scale = _params(n, C)
    with torch.autocast(DEV, dtype=torch.bfloat16):
        out = mhc_coefficients(x, fn, base, scale, backend="triton")
    ref = mhc_coefficients_reference(x, fn, base, scale)
    for o, r in zip(out, ref):
        assert o.dtype == torch.float32 and rel_error(o, r) < 1e-5
    sum(o.sum() for o in out).backward()
    assert fn.grad is not None and torch.isfinite(x.grad).all()


def test_only_some_mappings_used():
    n, C = 4, 48
    x = torch.randn(9, n, C, device=DEV, requires_grad=True)
    fn, base, scale = _params(n, C)
    h_pre, _, h_res = mhc_coefficients(x, fn, base, scale, backend="triton")
    r_pre, _, r_res = mhc_coefficients_reference(x, fn, base, scale)
    g = torch.autograd.grad((h_pre * 2).sum() + h_res[..., 0, 1].sum(), [x, fn, scale])
    g_ref = torch.autograd.grad((r_pre * 2).sum() + r_res[..., 0, 1].sum(), [x, fn, scale])
    for a, b in zip(g, g_ref):
        assert rel_error(a, b) < 2e-5


def test_large_logits_stay_finite():
    n, C = 4, 48
    x = torch.randn(11, n, C, device=DEV, requires_grad=True)
    fn, base, scale = _params(n, C)
    with torch.no_grad():
        base.mul_(50.0)
    out = mhc_coefficients(x, fn, base, scale, backend="triton")
    ref = mhc_coefficients_reference(x, fn, base, scale)
    assert all(torch.isfinite(o).all() for o in out)
    assert rel_error(out[2], ref[2]) < 1e-4
    out[2].sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(fn.grad).all()


def test_autograd_glue_gradcheck_fp64():
    """float64 goes through the same autograd Function with the PyTorch twin of the kernels'
    decomposition (explicit G / d(sum x^2) formulas): gradcheck those formulas."""
    torch.manual_seed(1)
    n, C = 2, 3
    x = torch.randn(3, n, C, dtype=torch.float64, device=DEV, requires_grad=True)
    fn = (torch.randn((n + 2) * n, n * C, dtype=torch.float64, device=DEV) * 0.3).requires_grad_()
    base = torch.randn((n + 2) * n, dtype=torch.float64, device=DEV, requires_grad=True)
    scale = (torch.rand(3, dtype=torch.float64, device=DEV) + 0.5).requires_grad_()
    for hc_eps in (0.0, 1e-6):
        f = lambda *a: mhc_coefficients(*a, iters=6, rms_eps=1e-6, hc_eps=hc_eps,  # noqa: E731
                                        backend="triton")
        assert torch.autograd.gradcheck(f, (x, fn, base, scale), atol=1e-6)


def test_auto_backend_resolution():
    from torch_mhc.ops._backend import resolve_backend
    x = torch.randn(2, 4, 8, device=DEV)
    assert resolve_backend("auto", x) == ("triton" if CUDA else "torch")


@pytest.mark.parametrize("dtype,n,path", [
    (torch.bfloat16, 4, "dx4"), (torch.bfloat16, 2, "dx4"), (torch.bfloat16, 1, "dx4"),
    (torch.bfloat16, 8, "general"), (torch.float16, 4, "general"), (torch.float32, 4, "general"),
    (torch.float32, 3, "general")])
@pytest.mark.parametrize("tiles_per_program", [None, 1, 2])
def test_backward_paths(dtype, n, path, tiles_per_program, monkeypatch):
    """Both passes over x give the reference gradients: the default one (``_coef_dx4_kernel``,
    bf16 streams with n <= 4, unused streams masked for n < 4) and the general one
    (``_coef_bwd_x_kernel`` + ``_coef_dfn_kernel``: float32 / float16 streams, n > 4); also
    with one or two token tiles per program, which leaves the last loop step ragged or
    empty."""
    from torch_mhc.ops.coefficients import backward_x
    from torch_mhc.ops.tuning import TUNING
    key = "coef_dx4" if path == "dx4" else "coef_dx"
    if tiles_per_program:
        monkeypatch.setitem(TUNING, key, {"tiles_per_program": tiles_per_program})
    launched = []
    for name in ("_dx4_pass", "_dx_pass"):
        real = getattr(backward_x, name)
        monkeypatch.setattr(backward_x, name,
                            lambda *a, _real=real, _name=name: launched.append(_name) or _real(*a))
    torch.manual_seed(n)
    C, T = 40, 37
    x = torch.randn(T, n, C, device=DEV).to(dtype).requires_grad_()
    fn, base, scale = _params(n, C)
    # 16-bit streams: dx is rounded to them; the dx4 pass forms G fn from bf16 parts
    tol = (1e-5, 2e-5) if dtype == torch.float32 else (1e-4, 2e-2)
    _compare(x, fn, base, scale, 0.0, 1e-6, *tol)
    _compare(x, fn, base, scale, 1e-6, 1e-6, *tol)
    assert set(launched) == {"_dx4_pass" if path == "dx4" else "_dx_pass"}


@pytest.mark.parametrize("S,n,C,R", [(1, 4, 40, 1), (3, 4, 100, 70), (16, 2, 48, 129),
                                     (5, 8, 24, 9)])
def test_gradient_partial_sums(S, n, C, R):
    """The one launch that finishes the backward's reductions sums dfn's per-token-range
    partials (their first N of NP rows) and the token kernel's dscale / dbase partials
    exactly as PyTorch does (float32, fixed order): several split counts, program counts
    that are not multiples of its row tile, blocks that end mid-row."""
    from torch_mhc.ops.coefficients.backward_x import _grad_sums
    torch.manual_seed(S * 100 + R)
    N = (n + 2) * n
    NP = max(16, 1 << (N - 1).bit_length())
    dfn_p = torch.randn(S, NP, n * C, device=DEV)
    red = torch.randn(R, 3 + N, device=DEV)
    dfn, gates = _grad_sums(dfn_p, red)
    assert dfn.shape == (N, n * C) and gates.shape == (3 + N,)
    torch.testing.assert_close(dfn, dfn_p[:, :N].double().sum(0).float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gates, red.double().sum(0).float(), rtol=1e-5, atol=1e-5)
