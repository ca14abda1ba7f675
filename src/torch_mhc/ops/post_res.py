"""Post + residual merge: ``x_{l+1} = H_res x_l + H_post^T y`` (Eq. 3).

Reference in PyTorch plus the fused Triton kernels (the paper's kernel 5, Sec. 4.3.1):

* forward ``_post_res_fwd_kernel``: ``out[t, i] = sum_j H_res[t, i, j] x[t, j] + H_post[t, i] y[t]``
  reading ``x`` and ``y`` once and writing ``out`` once: ``(n+1)C`` read, ``nC`` written
  per token instead of ``(3n+1)C`` / ``3nC`` unfused;
* backward ``_post_res_bwd_kernel``, one pass over ``g = d out``, ``x`` and ``y`` on a
  (token, channel) grid: ``dy = sum_i H_post_i g_i``, ``dH_post_i = <g_i, y>``,
  ``dH_res[i, j] = <g_i, x_j>`` (per-channel-slice partial sums, added up afterwards) and
  (optionally) ``dx_j = sum_i H_res[i, j] g_i``. The fused connection (``ops.connection``)
  skips ``dx`` here and folds that term into the single ``dx`` pass of the coefficient
  backward, which reads ``g`` instead of a separately written ``dx``.
"""
from __future__ import annotations

import torch

from ._backend import (as_streams, compute_dtype, interpret_mode, is_broadcast, kernel_impl,
                       resolve_backend)
from ._launch import LazyJit, Launch, fit_channel_tile, next_pow2, triton_cdiv
from ._library import FusedOp, tracing
from ._tiles import _row_tile, _stream
from .tuning import launch_plan, stream_shape

__all__ = ["post_res", "post_res_reference"]


def post_res_reference(x: torch.Tensor, y: torch.Tensor, h_post: torch.Tensor,
                       h_res: torch.Tensor) -> torch.Tensor:
    """``out_i = sum_j H_res[i, j] x_j + H_post[i] y`` in float32 (float64 if given), returned in ``x``'s dtype."""
    dt = compute_dtype(x, y, h_post, h_res)
    mixed = torch.einsum("...ij,...jc->...ic", h_res.to(dt), x.to(dt))
    return (mixed + h_post.to(dt).unsqueeze(-1) * y.to(dt).unsqueeze(-2)).to(x.dtype)


# -- Triton kernels ------------------------------------------------------------------------------

def _post_res_fwd_kernel(x_ptr, y_ptr, hpost_ptr, hres_ptr, out_ptr, T, C,
                         n: tl.constexpr, NB: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
                         X_BROADCAST: tl.constexpr):
    # tokens ascending (one channel tile at C <= 4096): the next connection's GEMM reads out
    # descending (``_launch``)
    rows, rmask, r64, ii, cc, m2, mc = _row_tile(tl.program_id(0), tl.program_id(1), T, C,
                                                 n, NB, BT, BC)
    y = tl.load(y_ptr + r64[:, None] * C + cc[None, :], mask=mc, other=0.0).to(tl.float32)
    hp = tl.load(hpost_ptr + r64[:, None] * n + ii[None, :], mask=m2, other=0.0)
    out = hp[:, :, None] * y[:, None, :]
    if X_BROADCAST:  # x a broadcast view: sum_j H_res[i, j] x_j = (row sum i of H_res) x
        x2 = tl.load(x_ptr + r64[:, None] * C + cc[None, :], mask=mc, other=0.0)
        hr = tl.load(hres_ptr + r64[:, None, None] * (n * n) + ii[None, :, None] * n
                     + ii[None, None, :], mask=m2[:, :, None] & (ii < n)[None, None, :], other=0.0)
        out += tl.sum(hr, axis=2)[:, :, None] * x2.to(tl.float32)[:, None, :]
    else:
        for j in tl.static_range(n):
            xj = tl.load(x_ptr + r64[:, None] * (n * C) + j * C + cc[None, :], mask=mc, other=0.0)
            hj = tl.load(hres_ptr + r64[:, None] * (n * n) + ii[None, :] * n + j, mask=m2,
                         other=0.0)
            out += hj[:, :, None] * xj.to(tl.float32)[:, None, :]
    tl.store(out_ptr + r64[:, None, None] * (n * C) + ii[None, :, None] * C + cc[None, None, :],
             out.to(out_ptr.dtype.element_ty), mask=m2[:, :, None] & (cc < C)[None, None, :])


def _post_res_bwd_kernel(x_ptr, y_ptr, hpost_ptr, hres_ptr, g_ptr, dx_ptr, dy_ptr, part_ptr,
                         T, C, n: tl.constexpr, NB: tl.constexpr, BT: tl.constexpr,
                         BC: tl.constexpr, WRITE_DX: tl.constexpr,
                         X_BROADCAST: tl.constexpr, G_BROADCAST: tl.constexpr):
    # One (token tile, channel tile) per program, no loop over C (like the forward): dy for
    # the tile, and this channel slice's partial dot products
    #   part[pid_c, t, i] = <g_i, y>,  part[pid_c, t, n + i n + j] = <g_i, x_j>
    # which the launcher sums over the C / BC slices (a few MB at most). Tokens descending:
    # the previous dx pass wrote g ascending, its last rows are still in L2.
    # Every stream of x is loaded (one [BT, NB, BC] tile) before the first store, so that all
    # of the program's reads are in flight at once: a load placed after a store (no alias
    # information) or a reduction's barrier is issued only once the work before it is done
    # (loading x_j per stream after the previous stream's store: 64.6 against 61.2 us at
    # T = 8192, C = 1024 on an H100, connection-kernels_h100_2026-12-08_c3229b5_variants.json).
    pid_c = tl.program_id(1)
    rows, rmask, r64, ii, cc, m2, mc = _row_tile(tl.cdiv(T, BT) - 1 - tl.program_id(0), pid_c,
                                                 T, C, n, NB, BT, BC)
    m3 = m2[:, :, None] & (cc < C)[None, None, :]
    off3 = r64[:, None, None] * (n * C) + ii[None, :, None] * C + cc[None, None, :]
    # X_BROADCAST / G_BROADCAST: x / g a broadcast view (stream stride 0): one (T, C) row
    if G_BROADCAST:
        g2 = tl.load(g_ptr + r64[:, None] * C + cc[None, :], mask=mc, other=0.0).to(tl.float32)
        g3 = tl.broadcast_to(g2[:, None, :], [BT, NB, BC])
    else:
        g3 = tl.load(g_ptr + off3, mask=m3, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + r64[:, None] * C + cc[None, :], mask=mc, other=0.0).to(tl.float32)
    hp = tl.load(hpost_ptr + r64[:, None] * n + ii[None, :], mask=m2, other=0.0)
    if X_BROADCAST:
        x2 = tl.load(x_ptr + r64[:, None] * C + cc[None, :], mask=mc, other=0.0).to(tl.float32)
    else:
        x3 = tl.load(x_ptr + off3, mask=m3, other=0.0)
    tl.store(dy_ptr + r64[:, None] * C + cc[None, :],
             tl.sum(g3 * hp[:, :, None], axis=1).to(dy_ptr.dtype.element_ty), mask=mc)
    prow = part_ptr + (pid_c * T + r64) * (n + n * n)
    tl.store(prow[:, None] + ii[None, :], tl.sum(g3 * y[:, None, :], axis=2), mask=m2)
    if X_BROADCAST:  # <g_i, x_j> = <g_i, x> for every j
        gx = tl.sum(g3 * x2[:, None, :], axis=2)
        for j in tl.static_range(n):
            tl.store(prow[:, None] + n + ii[None, :] * n + j, gx, mask=m2)
    else:
        for j in tl.static_range(n):
            tl.store(prow[:, None] + n + ii[None, :] * n + j,
                     tl.sum(g3 * _stream(x3, ii, j)[:, None, :], axis=2), mask=m2)
    if WRITE_DX:  # dx_j = sum_i H_res[i, j] g_i
        dx = tl.zeros([BT, NB, BC], dtype=tl.float32)
        for i in tl.static_range(n):
            if G_BROADCAST:
                gi = g2
            else:  # stream i of the g tile loaded above
                gi = _stream(g3, ii, i)
            hi = tl.load(hres_ptr + r64[:, None] * (n * n) + i * n + ii[None, :], mask=m2,
                         other=0.0)
            dx += hi[:, :, None] * gi[:, None, :]
        tl.store(dx_ptr + off3, dx.to(dx_ptr.dtype.element_ty), mask=m3)


_post_res_fwd = LazyJit(_post_res_fwd_kernel, helpers=(_row_tile,))
_post_res_bwd = LazyJit(_post_res_bwd_kernel, helpers=(_row_tile, _stream))


def _fwd_plan(cfg, T, n, C, broadcast, interpret, **_):
    BT, BC = cfg["BT"], fit_channel_tile(cfg["BC"], C)
    return Launch(_post_res_fwd, (triton_cdiv(T, BT), triton_cdiv(C, BC)), interpret, n=n,
                  NB=next_pow2(n), BT=BT, BC=BC, X_BROADCAST=broadcast,
                  num_warps=cfg["num_warps"])


def _bwd_plan(cfg, T, n, C, broadcast, interpret, write_dx, g_broadcast, **_):
    BT, BC = (2 if interpret else cfg["BT"]), fit_channel_tile(cfg["BC"], C)
    S = triton_cdiv(C, BC)
    return S, Launch(_post_res_bwd, (triton_cdiv(T, BT), S), interpret, n=n, NB=next_pow2(n),
                     BT=BT, BC=BC, WRITE_DX=write_dx, G_BROADCAST=g_broadcast,
                     X_BROADCAST=broadcast, num_warps=cfg["num_warps"])


def post_res_forward_triton(x, y, h_post, h_res, shape=None):
    """``x (..., n, C)``, ``y`` (``T C`` values), ``h_post`` (``T n``), ``h_res`` (``T n n``)
    -> ``out`` like ``x`` (contiguous); ``shape`` is ``tuning.stream_shape(x)`` where the
    caller has it."""
    shape = shape or stream_shape(x)
    launch = launch_plan("post_res_fwd", _fwd_plan, **shape)
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    launch(x, y, h_post, h_res, out, shape["T"], shape["C"])
    return out


def post_res_backward_triton(x, y, h_post, h_res, g, write_dx=True, shape=None):
    """``(dx or None, dy, d_map)`` in one pass over ``g``, ``x`` and ``y``.

    ``d_map (T, n + n^2)`` float32 holds ``[dH_post, dH_res (row-major)]`` per token, the
    sum of the per-channel-slice partials the kernel writes (:func:`split_map_grad`);
    ``dy`` has ``y``'s shape.
    """
    shape = shape or stream_shape(x)
    T, n = shape["T"], shape["n"]
    S, launch = launch_plan("post_res_bwd", _bwd_plan, write_dx=write_dx,
                            g_broadcast=is_broadcast(g), **shape)
    dy = torch.empty(y.shape, device=x.device, dtype=y.dtype)
    part = torch.empty(S, T, n + n * n, device=x.device, dtype=torch.float32)
    dx = torch.empty(x.shape, device=x.device, dtype=x.dtype) if write_dx else None
    launch(x, y, h_post, h_res, g, dx if write_dx else dy, dy, part, T, shape["C"])
    return dx, dy, part[0] if S == 1 else part.sum(0)


def post_res_forward_torch(x, y, h_post, h_res):
    """PyTorch twin of :func:`post_res_forward_triton` (any float dtype)."""
    dt = compute_dtype(x)
    out = torch.einsum("tij,tjc->tic", h_res.to(dt), x.to(dt))
    return (out + h_post.to(dt).unsqueeze(-1) * y.to(dt).unsqueeze(-2)).to(x.dtype)


def post_res_backward_torch(x, y, h_post, h_res, g, write_dx=True):
    """PyTorch twin of :func:`post_res_backward_triton`."""
    dt = compute_dtype(x)
    gf, xf, yf = g.to(dt), x.to(dt), y.to(dt)
    dy = torch.einsum("ti,tic->tc", h_post.to(dt), gf).to(y.dtype)
    dhpost = torch.einsum("tic,tc->ti", gf, yf)
    dhres = torch.einsum("tic,tjc->tij", gf, xf)
    dx = torch.einsum("tij,tic->tjc", h_res.to(dt), gf).to(x.dtype) if write_dx else None
    return dx, dy, torch.cat([dhpost, dhres.flatten(1)], 1)


def split_map_grad(d_map: torch.Tensor, n: int):
    """``(dH_post (T, n), dH_res (T, n, n))`` as views of ``d_map (T, n + n^2)``."""
    return d_map[:, :n], d_map[:, n:].unflatten(-1, (n, n))


def map_grads(d_map: torch.Tensor, post_shape):
    """``(dH_post, dH_res)`` shaped as ``H_post (..., n)`` and ``H_res (..., n, n)``: views of
    ``d_map (T, n + n^2)`` (:func:`split_map_grad`); in eager mode one ``as_strided`` each
    rather than a chain of slices and views (host time per op)."""
    n = post_shape[-1]
    lead = post_shape[:-1]
    if tracing(d_map):
        d_post, d_res = split_map_grad(d_map, n)
        return d_post.view(post_shape), d_res.view(*lead, n, n)
    strides, step = [], d_map.stride(0)
    for size in reversed(lead):
        strides.append(step)
        step *= size
    strides.reverse()
    off = d_map.storage_offset()
    return (d_map.as_strided(post_shape, (*strides, 1), off),
            d_map.as_strided((*lead, n, n), (*strides, n, 1), off + n))


_POST_IMPL = {"triton": (post_res_forward_triton, post_res_backward_triton),
              "torch": (post_res_forward_torch, post_res_backward_torch)}


# -- torch.library ops (``_library``) ------------------------------------------------------------

def post_res_forward_impl(x, y, h_post, h_res):
    """The fused forward on any layout of its inputs (the impl of ``torch_mhc::post_res``)."""
    x = as_streams(x)
    return _POST_IMPL[kernel_impl(x)][0](x, y.contiguous(), h_post.contiguous(),
                                         h_res.contiguous())


def _forward_fake(x, y, h_post, h_res):
    return x.new_empty(x.shape)


def _backward_impl(x, y, h_post, h_res, g, write_dx):
    xs, y_shape = as_streams(x), y.shape
    impl = kernel_impl(xs)
    if impl == "torch" or xs.dim() != x.dim():  # the twin and broadcast views: (T, n, C)
        n, C = x.shape[-2:]
        xs, y, h_post, h_res = (xs.reshape(-1, n, C), y.reshape(-1, C), h_post.reshape(-1, n),
                                h_res.reshape(-1, n, n))
        g = g.reshape(-1, n, C)
    dx, dy, d_map = _POST_IMPL[impl][1](
        xs, y.contiguous(), h_post.contiguous(), h_res.contiguous(), as_streams(g), write_dx)
    dy = dy if dy.shape == y_shape else dy.view(y_shape)
    return (dx.view(x.shape) if write_dx else x.new_empty(0)), dy, d_map


def _backward_fake(x, y, h_post, h_res, g, write_dx):
    n, C = x.shape[-2:]
    return (x.new_empty(x.shape if write_dx else (0,)), y.new_empty(y.shape),
            x.new_empty(x.numel() // (n * C), n + n * n, dtype=compute_dtype(x)))


#: ``torch.ops.torch_mhc.post_res_backward(x, y, h_post, h_res, g, write_dx)
#: -> (dx, dy, [dH_post, dH_res])`` in one pass over ``g``, ``x`` and ``y`` (``dx`` empty
#: unless ``write_dx``).
post_res_backward_op = FusedOp(
    "post_res_backward", _backward_impl, _backward_fake,
    schema="(Tensor x, Tensor y, Tensor h_post, Tensor h_res, Tensor g, bool write_dx) "
           "-> (Tensor, Tensor, Tensor)")


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, g):
    x, y, h_post, h_res = ctx.saved_tensors
    dx, dy, d_map = post_res_backward_op(x, y, h_post, h_res, g, ctx.needs_input_grad[0])
    dhpost, dhres = split_map_grad(d_map, x.shape[1])
    return (dx if ctx.needs_input_grad[0] else None), dy, dhpost.to(h_post.dtype), \
        dhres.to(h_res.dtype)


#: ``torch.ops.torch_mhc.post_res(x (T, n, C), y (T, C), h_post (T, n), h_res (T, n, n))
#: -> out (T, n, C)``; saves ``x``, ``y`` (the callers' tensors) and the mappings.
post_res_op = FusedOp("post_res", post_res_forward_impl, _forward_fake, _setup, _backward,
                      schema="(Tensor x, Tensor y, Tensor h_post, Tensor h_res) -> Tensor")


def post_res(x: torch.Tensor, y: torch.Tensor, h_post: torch.Tensor, h_res: torch.Tensor,
             backend: str = "auto") -> torch.Tensor:
    """Next streams from streams ``x (..., n, C)``, branch output ``y (..., C)`` and mappings.

    Returns ``x``'s shape and dtype. ``backend="triton"``: fused kernels (module doc) as the
    custom op ``torch.ops.torch_mhc.post_res``; float64 runs their PyTorch twin through the
    same op.
    """
    if resolve_backend(backend, x) == "triton":
        lead, (n, C) = x.shape[:-2], x.shape[-2:]
        dt = compute_dtype(x)
        y2 = y.expand(*lead, C).reshape(-1, C)
        hp = h_post.expand(*lead, n).reshape(-1, n).to(dt)
        hr = h_res.expand(*lead, n, n).reshape(-1, n, n).to(dt)
        return post_res_op(x.reshape(-1, n, C), y2, hp, hr).view(*lead, n, C)
    return post_res_reference(x, y, h_post, h_res)
