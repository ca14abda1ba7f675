"""Pre-mix: the branch input ``h = H_pre x`` (Eq. 3), n streams -> one.

Reference in PyTorch plus the fused Triton kernels (the paper's kernel 4, Sec. 4.3.1):

* forward ``_pre_mix_fwd_kernel``: ``h[t, c] = sum_i H_pre[t, i] x[t, i, c]``, reading ``x``
  once and writing ``h`` once (fp32 accumulation, ``h`` in ``x``'s dtype);
* backward ``_pre_mix_bwd_kernel``: one pass over ``x`` and ``dh`` giving
  ``dH_pre[t, i] = <dh[t], x[t, i]>`` and (optionally) ``dx[t, i] = H_pre[t, i] dh[t]``.
  The fused connection (``ops.connection``) uses it without ``dx``: its ``dx`` is written
  once, by the coefficient backward pass, for all three ops.
"""
from __future__ import annotations

import torch

from ._backend import as_streams, compute_dtype, kernel_impl, resolve_backend
from ._launch import LazyJit, Launch, fit_channel_tile, next_pow2, triton_cdiv
from ._library import FusedOp
from ._tiles import _row_tile
from .tuning import launch_plan, stream_shape

__all__ = ["pre_mix", "pre_mix_reference"]


def pre_mix_reference(x: torch.Tensor, h_pre: torch.Tensor) -> torch.Tensor:
    """``sum_i H_pre[..., i] * x[..., i, :]`` in float32 (float64 if given), returned in ``x``'s dtype."""
    dt = compute_dtype(x, h_pre)
    return torch.einsum("...i,...ic->...c", h_pre.to(dt), x.to(dt)).to(x.dtype)


# -- Triton kernels ------------------------------------------------------------------------------

def _pre_mix_fwd_kernel(x_ptr, hpre_ptr, h_ptr, T, C,
                        n: tl.constexpr, NB: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
                        X_BROADCAST: tl.constexpr):
    # token-major, ascending: the coefficient GEMM just read x descending (``_launch``)
    pid = tl.program_id(0)
    c_tiles = tl.cdiv(C, BC)
    rows, rmask, r64, ii, cc, m2, mc = _row_tile(pid // c_tiles, pid % c_tiles, T, C, n, NB, BT, BC)
    hp = tl.load(hpre_ptr + r64[:, None] * n + ii[None, :], mask=m2, other=0.0)
    if X_BROADCAST:  # x a broadcast view: h = (sum_i H_pre_i) x
        x2 = tl.load(x_ptr + r64[:, None] * C + cc[None, :], mask=mc, other=0.0)
        h = tl.sum(hp, axis=1)[:, None] * x2.to(tl.float32)
    else:
        x3 = tl.load(x_ptr + r64[:, None, None] * (n * C) + ii[None, :, None] * C
                     + cc[None, None, :], mask=m2[:, :, None] & (cc < C)[None, None, :], other=0.0)
        h = tl.sum(x3.to(tl.float32) * hp[:, :, None], axis=1)
    tl.store(h_ptr + r64[:, None] * C + cc[None, :], h.to(h_ptr.dtype.element_ty), mask=mc)


def _pre_mix_bwd_kernel(x_ptr, hpre_ptr, dh_ptr, dx_ptr, dhpre_ptr, T, C,
                        n: tl.constexpr, NB: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
                        WRITE_DX: tl.constexpr, X_BROADCAST: tl.constexpr):
    # descending: the coefficient backward's dx pass then starts from the low tokens' x and dh,
    # still in L2 (``_launch``)
    pid = tl.cdiv(T, BT) - 1 - tl.program_id(0)
    rows = pid * BT + tl.arange(0, BT)
    r64 = rows.to(tl.int64)
    ii = tl.arange(0, NB)
    m2 = (rows < T)[:, None] & (ii < n)[None, :]
    if WRITE_DX:
        hp = tl.load(hpre_ptr + r64[:, None] * n + ii[None, :], mask=m2, other=0.0)
    acc = tl.zeros([BT, NB, BC], dtype=tl.float32)
    for c0 in range(0, C, BC):
        cc = c0 + tl.arange(0, BC)
        cm = cc < C
        m3 = m2[:, :, None] & cm[None, None, :]
        off3 = r64[:, None, None] * (n * C) + ii[None, :, None] * C + cc[None, None, :]
        mc = (rows < T)[:, None] & cm[None, :]
        if X_BROADCAST:  # x a broadcast view: one (T, C) row, the same for every stream
            x3 = tl.load(x_ptr + r64[:, None] * C + cc[None, :], mask=mc, other=0.0)[:, None, :]
        else:
            x3 = tl.load(x_ptr + off3, mask=m3, other=0.0)
        dh = tl.load(dh_ptr + r64[:, None] * C + cc[None, :], mask=mc, other=0.0).to(tl.float32)
        acc += x3.to(tl.float32) * dh[:, None, :]
        if WRITE_DX:
            tl.store(dx_ptr + off3, (hp[:, :, None] * dh[:, None, :]).to(dx_ptr.dtype.element_ty),
                     mask=m3)
    tl.store(dhpre_ptr + r64[:, None] * n + ii[None, :], tl.sum(acc, axis=2), mask=m2)


_pre_mix_fwd = LazyJit(_pre_mix_fwd_kernel, helpers=(_row_tile,))
_pre_mix_bwd = LazyJit(_pre_mix_bwd_kernel)


def _fwd_plan(cfg, T, n, C, broadcast, interpret, **_):
    BT, BC = cfg["BT"], fit_channel_tile(cfg["BC"], C)
    return Launch(_pre_mix_fwd, (triton_cdiv(T, BT) * triton_cdiv(C, BC),), interpret, n=n,
                  NB=next_pow2(n), BT=BT, BC=BC, X_BROADCAST=broadcast,
                  num_warps=cfg["num_warps"])


def _bwd_plan(cfg, T, n, C, broadcast, interpret, write_dx, **_):
    BT, BC = cfg["BT"], fit_channel_tile(cfg["BC"], C)
    return Launch(_pre_mix_bwd, (triton_cdiv(T, BT),), interpret, n=n, NB=next_pow2(n), BT=BT,
                  BC=BC, WRITE_DX=write_dx, X_BROADCAST=broadcast, num_warps=cfg["num_warps"])


def pre_mix_forward_triton(x: torch.Tensor, h_pre: torch.Tensor, shape=None) -> torch.Tensor:
    """``x (..., n, C)`` (contiguous or broadcast), ``h_pre`` fp32 with ``T n`` elements ->
    ``h (..., C)`` in ``x``'s dtype; ``shape`` is ``tuning.stream_shape(x)`` where the caller
    has it."""
    shape = shape or stream_shape(x)
    launch = launch_plan("pre_mix_fwd", _fwd_plan, **shape)
    h = torch.empty(x.shape[:-2] + x.shape[-1:], device=x.device, dtype=x.dtype)
    launch(x, h_pre, h, shape["T"], shape["C"])
    return h


def pre_mix_backward_triton(x: torch.Tensor, h_pre: torch.Tensor, dh: torch.Tensor,
                            write_dx: bool = True, shape=None):
    """``(dx or None, dH_pre (..., n) fp32)`` from ``dh (..., C)``, one pass over ``x`` and
    ``dh`` (``h_pre`` is read only for ``dx``)."""
    shape = shape or stream_shape(x)
    launch = launch_plan("pre_mix_bwd", _bwd_plan, write_dx=write_dx, **shape)
    dhpre = torch.empty(x.shape[:-1], device=x.device, dtype=torch.float32)
    dx = torch.empty_like(x) if write_dx else None
    launch(x, h_pre, dh, dx if write_dx else dhpre, dhpre, shape["T"], shape["C"])
    return dx, dhpre


def pre_mix_forward_torch(x, h_pre):
    """PyTorch twin of :func:`pre_mix_forward_triton` (any float dtype)."""
    dt = compute_dtype(x)
    return torch.einsum("ti,tic->tc", h_pre.to(dt), x.to(dt)).to(x.dtype)


def pre_mix_backward_torch(x, h_pre, dh, write_dx=True):
    """PyTorch twin of :func:`pre_mix_backward_triton`."""
    dt = compute_dtype(x)
    dhpre = torch.einsum("tc,tic->ti", dh.to(dt), x.to(dt))
    dx = (h_pre.to(dt).unsqueeze(-1) * dh.to(dt).unsqueeze(-2)).to(x.dtype) if write_dx else None
    return dx, dhpre


_PRE_IMPL = {"triton": (pre_mix_forward_triton, pre_mix_backward_triton),
             "torch": (pre_mix_forward_torch, pre_mix_backward_torch)}


# -- torch.library ops (``_library``) ------------------------------------------------------------

def _forward_impl(x, h_pre):
    x = as_streams(x)
    return _PRE_IMPL[kernel_impl(x)][0](x, h_pre.contiguous())


def _backward_impl(x, h_pre, dh, write_dx):
    x = as_streams(x)
    dx, dhpre = _PRE_IMPL[kernel_impl(x)][1](x, h_pre.contiguous(), dh.contiguous(), write_dx)
    return (dx if write_dx else x.new_empty(0)), dhpre


def _backward_fake(x, h_pre, dh, write_dx):
    return (x.new_empty(x.shape if write_dx else (0,)),
            x.new_empty(x.shape[:2], dtype=compute_dtype(x)))


#: ``torch.ops.torch_mhc.pre_mix_backward(x, h_pre, dh, write_dx) -> (dx, dH_pre)`` (``dx``
#: empty unless ``write_dx``).
pre_mix_backward_op = FusedOp(
    "pre_mix_backward", _backward_impl, _backward_fake,
    schema="(Tensor x, Tensor h_pre, Tensor dh, bool write_dx) -> (Tensor, Tensor)")


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, dh):
    x, h_pre = ctx.saved_tensors
    dx, dhpre = pre_mix_backward_op(x, h_pre, dh, ctx.needs_input_grad[0])
    return (dx if ctx.needs_input_grad[0] else None), dhpre.to(h_pre.dtype)


#: ``torch.ops.torch_mhc.pre_mix(x (T, n, C), h_pre (T, n)) -> h (T, C)``; saves ``x`` (the
#: caller's tensor) and ``h_pre``.
pre_mix_op = FusedOp(
    "pre_mix", _forward_impl,
    lambda x, h_pre: x.new_empty(x.shape[0], x.shape[2]), _setup, _backward,
    schema="(Tensor x, Tensor h_pre) -> Tensor")


def pre_mix(x: torch.Tensor, h_pre: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Branch input from streams ``x (..., n, C)`` and weights ``h_pre (..., n)``.

    Returns ``(..., C)`` in ``x``'s dtype. ``backend="triton"``: fused kernels (module doc)
    as the custom op ``torch.ops.torch_mhc.pre_mix``; float64 runs their PyTorch twin
    through the same op.
    """
    if resolve_backend(backend, x) == "triton":
        lead, (n, C) = x.shape[:-2], x.shape[-2:]
        hp = h_pre.expand(*lead, n).reshape(-1, n)
        if hp.dtype != torch.float64:
            hp = hp.float()
        return pre_mix_op(x.reshape(-1, n, C), hp).view(*lead, C)
    return pre_mix_reference(x, h_pre)
