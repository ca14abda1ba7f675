"""Fused Triton post + residual kernels (ops/post_res.py) vs the PyTorch reference."""
import pytest
import torch

pytest.importorskip("triton")

from torch_mhc.testing import rel_error  # noqa: E402
from torch_mhc.ops.post_res import post_res, post_res_reference  # noqa: E402

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"


@pytest.mark.parametrize("n,C,T", [(1, 48, 7), (2, 100, 5), (4, 48, 9), (4, 100, 3), (8, 24, 5), (3, 40, 4)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_forward_backward(n, C, T, dtype, tol):
    x = torch.randn(T, n, C, device=DEV).to(dtype).requires_grad_()
    y = torch.randn(T, C, device=DEV).to(dtype).requires_grad_()
    h_post = (2 * torch.rand(T, n, device=DEV)).requires_grad_()
    h_res = torch.rand(T, n, n, device=DEV, requires_grad=True)
    args = (x, y, h_post, h_res)
    out = post_res(*args, backend="triton")
    ref = post_res_reference(*args)
    assert out.dtype == x.dtype and out.shape == ref.shape
    assert rel_error(out, ref) < tol
    w = torch.randn_like(ref, dtype=torch.float32)
    g = torch.autograd.grad((out.float() * w).sum(), args)
    g_ref = torch.autograd.grad((ref.float() * w).sum(), args)
    for name, a, b, t in zip("x y h_post h_res".split(), g, g_ref, (tol, tol, 1e-5, 1e-5)):
        assert a.dtype == b.dtype, name
        assert rel_error(a, b) < t, (name, rel_error(a, b))


def test_mixed_dtypes_autocast():
    """Under autocast the branch output is bf16 while the streams stay fp32."""
    x = torch.randn(2, 5, 4, 48, device=DEV, requires_grad=True)
    y = torch.randn(2, 5, 48, device=DEV).bfloat16().requires_grad_()
    h_post = torch.rand(2, 5, 4, device=DEV)
    h_res = torch.rand(2, 5, 4, 4, device=DEV)
    out = post_res(x, y, h_post, h_res, backend="triton")
    ref = post_res_reference(x, y, h_post, h_res)
    assert out.dtype == torch.float32 and rel_error(out, ref) < 1e-6
    out.sum().backward()
    assert y.grad.dtype == torch.bfloat16 and x.grad.dtype == torch.float32


def test_gradcheck_fp64_glue():
    args = (torch.randn(3, 2, 5, dtype=torch.float64, device=DEV, requires_grad=True),
            torch.randn(3, 5, dtype=torch.float64, device=DEV, requires_grad=True),
            torch.rand(3, 2, dtype=torch.float64, device=DEV, requires_grad=True),
            torch.rand(3, 2, 2, dtype=torch.float64, device=DEV, requires_grad=True))
    assert torch.autograd.gradcheck(lambda *a: post_res(*a, backend="triton"), args)


@pytest.mark.parametrize("n,C,T,split", [(4, 100, 37, None), (4, 64, 20, 16), (3, 48, 19, 16),
                                         (1, 24, 5, None), (2, 40, 33, 16)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 3e-5)])
@pytest.mark.parametrize("broadcast", [False, True])
def test_project_is_forward_plus_next_projection(n, C, T, split, dtype, tol, broadcast,
                                                 monkeypatch):
    """The post-res pass that also projects for the next connection writes the streams bit
    for bit as the plain post-res kernel, and per-slice partials (``split`` channels of each
    stream per slice: several slices) that sum to the coefficient GEMM's ``out fn^T`` and
    ``sum out^2`` of the stored streams (bf16: fn split hi + lo, as the GEMM)."""
    from torch_mhc.ops import tuning
    from torch_mhc.ops.post_res import post_res_forward_triton, post_res_project_triton
    if split is not None:
        monkeypatch.setitem(tuning.TUNING, "post_res_proj", {"BK": split})
    x = torch.randn(T, 1 if broadcast else n, C, device=DEV).to(dtype)
    x = x.expand(T, n, C) if broadcast else x
    y = torch.randn(T, C, device=DEV).to(dtype)
    h_post, h_res = 2 * torch.rand(T, n, device=DEV), torch.rand(T, n, n, device=DEV)
    fn = torch.randn((n + 2) * n, n * C, device=DEV)
    out, part = post_res_project_triton(x, y, h_post, h_res, fn)
    assert torch.equal(out, post_res_forward_triton(x, y, h_post, h_res))
    slices = 1 if split is None or split >= C else -(-C // split)
    assert part.shape == (slices, T, (n + 2) * n + 1) and part.dtype == torch.float32
    flat = out.double().reshape(T, n * C)
    assert rel_error(part.sum(0)[:, :-1], flat @ fn.double().T) < tol
    assert rel_error(part.sum(0)[:, -1], (flat * flat).sum(1)) < 1e-6
