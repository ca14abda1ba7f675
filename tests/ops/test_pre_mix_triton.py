"""Fused Triton pre-mix kernels (ops/pre_mix.py) vs the PyTorch reference (interpreter on CPU)."""
import pytest
import torch

pytest.importorskip("triton")

from torch_mhc.testing import rel_error  # noqa: E402
from torch_mhc.ops.pre_mix import pre_mix, pre_mix_reference  # noqa: E402

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"


@pytest.mark.parametrize("n,C,T", [(1, 48, 7), (2, 100, 5), (4, 48, 9), (4, 100, 3), (8, 24, 5), (3, 40, 4)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_forward_backward(n, C, T, dtype, tol):
    x = torch.randn(T, n, C, device=DEV).to(dtype).requires_grad_()
    h_pre = torch.rand(T, n, device=DEV, requires_grad=True)
    out = pre_mix(x, h_pre, backend="triton")
    ref = pre_mix_reference(x, h_pre)
    assert out.dtype == x.dtype and out.shape == ref.shape
    assert rel_error(out, ref) < tol
    w = torch.randn_like(ref, dtype=torch.float32)
    g = torch.autograd.grad((out.float() * w).sum(), [x, h_pre])
    g_ref = torch.autograd.grad((ref.float() * w).sum(), [x, h_pre])
    assert g[0].dtype == x.dtype
    assert rel_error(g[0], g_ref[0]) < tol
    assert rel_error(g[1], g_ref[1]) < 1e-5


def test_leading_dims_and_autocast():
    x = torch.randn(2, 3, 4, 48, device=DEV, requires_grad=True)
    h_pre = torch.rand(2, 3, 4, device=DEV, requires_grad=True)
    with torch.autocast(DEV, dtype=torch.bfloat16):
        out = pre_mix(x, h_pre, backend="triton")
    assert out.shape == (2, 3, 48) and out.dtype == torch.float32
    assert rel_error(out, pre_mix_reference(x, h_pre)) < 1e-6


def test_gradcheck_fp64_glue():
    x = torch.randn(3, 2, 5, dtype=torch.float64, device=DEV, requires_grad=True)
    h = torch.rand(3, 2, dtype=torch.float64, device=DEV, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: pre_mix(a, b, backend="triton"), (x, h))
