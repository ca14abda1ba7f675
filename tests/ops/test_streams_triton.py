"""The boundary kernels of ops/streams.py (broadcast to n streams, sum over them) against
their PyTorch references, forward and backward, in the interpreter on CPU or on a GPU."""
import pytest
import torch

pytest.importorskip("triton")

from torch_mhc import expand_streams, reduce_streams  # noqa: E402
from torch_mhc.ops.streams import (broadcast_streams, broadcast_streams_reference,  # noqa: E402
                                   sum_streams, sum_streams_reference)
from torch_mhc.testing import rel_error  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("shape,n", [((5, 48), 4), ((2, 3, 100), 3), ((7, 24), 1), ((3, 1030), 8)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_broadcast_and_sum_match_reference(shape, n, dtype):
    x = torch.randn(*shape, device=DEV).to(dtype).requires_grad_()
    s = 0.37
    out = broadcast_streams(x, n, s)
    ref = broadcast_streams_reference(x.detach(), n, s)
    assert out.shape == (*shape[:-1], n, shape[-1]) and out.is_contiguous() and out.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    assert rel_error(out, ref) < tol
    streams = torch.randn(*shape[:-1], n, shape[-1], device=DEV).to(dtype).requires_grad_()
    red = sum_streams(streams, s)
    assert red.shape == x.shape and red.dtype == dtype
    assert rel_error(red, sum_streams_reference(streams.detach(), s)) < tol
    # each is the other's adjoint: <broadcast(x), w> = <x, sum(w)>
    w = torch.randn_like(out)
    gx, = torch.autograd.grad((out * w).sum(), x)
    assert rel_error(gx, sum_streams_reference(w, s)) < tol
    v = torch.randn_like(red)
    gs, = torch.autograd.grad((red * v).sum(), streams)
    assert rel_error(gs, broadcast_streams_reference(v, n, s)) < tol


def test_expand_then_reduce_is_identity_and_gradcheck_fp64():
    x = torch.randn(4, 2, 33, device=DEV)
    assert torch.allclose(reduce_streams(expand_streams(x, 4)), x, atol=1e-6)
    assert torch.allclose(reduce_streams(expand_streams(x, 4), "sum"), 4 * x, atol=1e-5)
    xd = torch.randn(3, 2, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: reduce_streams(expand_streams(t, 3) * 1.5), (xd,))


def test_expand_view_is_a_read_only_broadcast_with_the_sum_as_gradient():
    """``view=True``: no copy (same storage, stream stride 0); writing into it fails loudly;
    its gradient is the stream sum, and reduce_streams' gradient is a broadcast view."""
    x = torch.randn(3, 5, 33, device=DEV, requires_grad=True)
    v = expand_streams(x, 4, view=True)
    assert v.shape == (3, 5, 4, 33) and v.stride(-2) == 0
    assert v.data_ptr() == x.data_ptr() and torch.equal(v[..., 2, :], x)
    with pytest.raises(RuntimeError):
        v.detach().add_(1.0)
    w = torch.randn(3, 5, 4, 33, device=DEV)
    (g,) = torch.autograd.grad((v * w).sum(), [x])
    assert rel_error(g, w.sum(-2)) < 1e-6
    s = torch.randn(3, 5, 4, 33, device=DEV, requires_grad=True)
    out = reduce_streams(s)
    (gs,) = torch.autograd.grad(out, [s], torch.ones_like(out))
    assert torch.allclose(gs, torch.full_like(gs, 0.25))
    with pytest.raises(ValueError):
        broadcast_streams(x, 4, s=2.0, view=True)
    xd = torch.randn(3, 2, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t: reduce_streams(expand_streams(t, 3, view=True) * 1.5), (xd,))
