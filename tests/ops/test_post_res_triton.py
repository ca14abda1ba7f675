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
