"""Widening a hidden state to ``n`` streams and collapsing them: the model's two boundaries.

* ``broadcast_streams(x, n, s)``: ``(T, C) -> (T, n, C)``, every stream ``s * x`` (or, with
  ``view=True``, the stream-stride-0 view of ``x``, no copy);
* ``sum_streams(x, s)``: ``(T, n, C) -> (T, C)``, ``s * sum_i x_i``.

Each is the other's backward (``expand_streams`` = broadcast with ``s = 1``, its gradient a sum;
``reduce_streams`` = sum with ``s = 1`` or ``1/n``, its gradient the broadcast view of
``s * g``). The fused mHC kernels read broadcast views in place: the first connection of a
model then reads its input stream once per token instead of ``n`` times, and the last
connection its incoming gradient. PyTorch runs the
broadcast as a strided copy and the sum as a reduction over a middle axis, both well below the
copy bandwidth on a GPU (about 160 and 80 us at T = C = 4096, n = 4, bf16 on an H100); the two
Triton kernels below read and write each element once, in ``x``'s dtype with fp32 sums.
"""
from __future__ import annotations

import torch

from ._backend import interpret_mode, triton_available
from ._launch import LazyJit, next_pow2, triton_cdiv
from .tuning import launch_config

__all__ = ["broadcast_streams", "sum_streams"]


def _stream_view(x: torch.Tensor, n: int) -> torch.Tensor:
    """``(..., C) -> (..., n, C)`` as a view: stream stride 0, no copy."""
    return x.unsqueeze(-2).expand(*x.shape[:-1], n, x.shape[-1])


def broadcast_streams_reference(x: torch.Tensor, n: int, s: float = 1.0) -> torch.Tensor:
    """``(..., C) -> (..., n, C)``, contiguous, every stream ``s * x``."""
    out = _stream_view(x, n)
    return (out * s if s != 1.0 else out).contiguous()


def sum_streams_reference(x: torch.Tensor, s: float = 1.0) -> torch.Tensor:
    """``(..., n, C) -> (..., C)``: ``s * sum_i x_i`` (float32 sums, ``x``'s dtype)."""
    out = x.float().sum(-2) if x.dtype in (torch.bfloat16, torch.float16) else x.sum(-2)
    return (out * s if s != 1.0 else out).to(x.dtype)


def _broadcast_kernel(x_ptr, out_ptr, C, s, n: tl.constexpr, NB: tl.constexpr, BC: tl.constexpr):
    s = tl.cast(s, tl.float32)  # (float64 when Inductor launches the kernel)
    t = tl.program_id(0).to(tl.int64)
    cc = tl.program_id(1) * BC + tl.arange(0, BC)
    ii = tl.arange(0, NB)
    v = tl.load(x_ptr + t * C + cc, mask=cc < C, other=0.0).to(tl.float32) * s
    out = tl.broadcast_to(v[None, :], [NB, BC]).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + t * n * C + ii[:, None] * C + cc[None, :], out,
             mask=(ii < n)[:, None] & (cc < C)[None, :])


def _sum_kernel(x_ptr, out_ptr, C, s, n: tl.constexpr, NB: tl.constexpr, BC: tl.constexpr):
    s = tl.cast(s, tl.float32)  # (float64 when Inductor launches the kernel)
    t = tl.program_id(0).to(tl.int64)
    cc = tl.program_id(1) * BC + tl.arange(0, BC)
    ii = tl.arange(0, NB)
    v = tl.load(x_ptr + t * n * C + ii[:, None] * C + cc[None, :],
                mask=(ii < n)[:, None] & (cc < C)[None, :], other=0.0).to(tl.float32)
    tl.store(out_ptr + t * C + cc, (tl.sum(v, axis=0) * s).to(out_ptr.dtype.element_ty),
             mask=cc < C)


_broadcast = LazyJit(_broadcast_kernel)
_sum = LazyJit(_sum_kernel)


def _fast(x: torch.Tensor) -> bool:
    """The Triton kernels: CUDA (or the interpreter), not float64, Triton installed."""
    return ((x.is_cuda or interpret_mode()) and x.dtype != torch.float64
            and triton_available())


def _launch(kernel, key, x, out, T, n, C, s):
    """One program per (token, channel slice), the slice from ``LAUNCH_DEFAULTS[key]``."""
    cfg = launch_config(key, T=T, n=n, C=C, dtype_bytes=x.element_size())
    BC = min(cfg["BC"], next_pow2(C))
    kernel[(T, triton_cdiv(C, BC))](x, out, C, float(s), n=n, NB=next_pow2(n), BC=BC,
                                    num_warps=cfg["num_warps"])


def _broadcast_impl(x: torch.Tensor, n: int, s: float) -> torch.Tensor:
    if not _fast(x):
        return broadcast_streams_reference(x, n, s)
    x = x.contiguous()
    C = x.shape[-1]
    T = x.numel() // max(C, 1)
    out = torch.empty(*x.shape[:-1], n, C, device=x.device, dtype=x.dtype)
    if out.numel():
        _launch(_broadcast, "broadcast_streams", x, out, T, n, C, s)
    return out


def _sum_impl(x: torch.Tensor, s: float) -> torch.Tensor:
    if not _fast(x):
        return sum_streams_reference(x, s)
    x = x.contiguous()
    n, C = x.shape[-2:]
    T = x.numel() // max(n * C, 1)
    out = torch.empty(*x.shape[:-2], C, device=x.device, dtype=x.dtype)
    if out.numel():
        _launch(_sum, "sum_streams", x, out, T, n, C, s)
    return out


class _BroadcastFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, n, s):
        ctx.s = s
        return _broadcast_impl(x, n, s)

    @staticmethod
    def backward(ctx, g):
        return _sum_impl(g, ctx.s), None, None


class _BroadcastViewFn(torch.autograd.Function):
    """``expand`` with the stream sum kernel as its backward (PyTorch's own reduction over
    the middle axis is slower)."""

    @staticmethod
    def forward(ctx, x, n):
        return _stream_view(x, n)

    @staticmethod
    def backward(ctx, g):
        return _sum_impl(g, 1.0), None


class _SumFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, s):
        ctx.n, ctx.s = x.shape[-2], s
        return _sum_impl(x, s)

    @staticmethod
    def backward(ctx, g):
        # a broadcast view, as PyTorch's own sum backward returns: the fused connection
        # reads it in place (``_backend.is_broadcast``), nothing n-wide is written
        g = g * ctx.s if ctx.s != 1.0 else g
        return _stream_view(g, ctx.n), None


def broadcast_streams(x: torch.Tensor, n: int, s: float = 1.0, view: bool = False) -> torch.Tensor:
    """``(..., C) -> (..., n, C)`` contiguous, every stream ``s * x``; differentiable (its
    gradient is :func:`sum_streams`). One Triton pass on CUDA, PyTorch elsewhere.

    ``view=True`` (``s = 1`` only): the broadcast view ``x.unsqueeze(-2).expand(...)``, no
    copy; its gradient is still one :func:`sum_streams` pass.
    """
    if view:
        if s != 1.0:
            raise ValueError("broadcast_streams(view=True) takes no scale")
        if torch.compiler.is_compiling():
            return _stream_view(x, n)
        return _BroadcastViewFn.apply(x, n)
    if torch.compiler.is_compiling():  # let the compiler fuse the plain form
        return broadcast_streams_reference(x, n, s)
    return _BroadcastFn.apply(x, n, s)


def sum_streams(x: torch.Tensor, s: float = 1.0) -> torch.Tensor:
    """``(..., n, C) -> (..., C)``: ``s * sum_i x_i`` (float32 sums); differentiable (its
    gradient is :func:`broadcast_streams`). One Triton pass on CUDA, PyTorch elsewhere."""
    if torch.compiler.is_compiling():
        return sum_streams_reference(x, s)
    return _SumFn.apply(x, s)
