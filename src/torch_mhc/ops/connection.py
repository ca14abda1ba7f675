"""The fused mHC connection: coefficients + pre-mix before the branch, post-res after it.

``HyperConnection`` (mode ``"mhc"``, Triton backend) calls

    h, h_pre, h_post, h_res, link = connection_pre(x, fn, base, scale, ...)
    y = branch(h)
    out = connection_post(x, y, h_post, h_res, link)

Both halves are custom autograd Functions over the kernels of ``coefficients``, ``pre_mix``
and ``post_res``. What the fusion buys, per token, in units of C stream elements (n = 4):

* forward: coefficient GEMM reads x (n), pre-mix reads x, writes h (n + 1), post-res reads
  x, y and writes out (2n + 1): 4n + 2 = 18, the paper's kernels 1-5;
* backward: post-res pass reads g, x, y and writes dy (2n + 2) but *not* dx; the pre-mix
  pass reads dh, x for dH_pre (n + 1); one final pass reads x, dh, g and writes the whole
  connection's dx = H_res^T g + H_pre dh + G fn + 2 x dss (3n + 1), with dfn = G^T x in the
  same pass (6n + 4 = 28 in all). Three separate ops would write three dx tensors and
  autograd would add them (another 4n of traffic).

Measured on an H100 (benchmarks/results/kernels_h100_s3.json, T = C = 4096, n = 4, bf16): the
whole forward's kernels take 221 us (91% of the copy bandwidth for 18 units), the backward's
419 us (75% of 28 units plus dfn; the dx + dfn pass takes 203 us).

The hand-off: ``connection_post``'s backward returns no gradient for ``x``, ``H_post`` or
``H_res``; it parks ``g = d out`` and its per-channel-slice partial sums of
``[dH_post, dH_res]`` on the shared ``link``. ``connection_pre``'s backward, which autograd
always runs after it (it produced ``H_post``/``H_res``), adds ``H_res^T g`` into its single
``dx`` pass and sums the partials in its token kernel (adding any gradient that other
consumers of ``H_post``/``H_res`` sent). The two halves must therefore be used as a pair on
the same ``x``, which ``HyperConnection`` guarantees.

Saved for backward per connection: ``x`` (the stream tensor that exists anyway, not copied),
``y`` (C values per token, needed for ``dH_post``), and per token ``(n+2)n + 1`` floats of
projection / 1/r plus ``H_pre``, ``H_res`` (45 floats at n = 4, < 1% of ``x`` at C = 4096).
The branch itself keeps its input ``h`` (C). Nothing stream-sized is kept in float32.
``torch.compile`` treats both halves as opaque (graph break at each; see ``connection_pre``).
"""
from __future__ import annotations

from typing import Optional

import torch

from ._backend import as_streams
from .coefficients import _COEF_IMPL
from .post_res import _POST_IMPL
from .pre_mix import _PRE_IMPL

__all__ = ["connection_pre", "connection_post", "ConnectionLink"]


class ConnectionLink:
    """Carries ``g = d out`` from the post half's backward to the pre half's backward."""

    __slots__ = ("g", "part")

    def __init__(self):
        self.g: Optional[torch.Tensor] = None
        self.part: Optional[torch.Tensor] = None  # (S, T, n + n^2) partial [dH_post, dH_res]


class _ConnectionPreFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, fn, base, scale, link, iters, rms_eps, hc_eps, impl):
        coef_fwd = _COEF_IMPL[impl][0]
        h_pre, h_post, h_res, mix = coef_fwd(x, fn, base, scale, iters, rms_eps, hc_eps)
        h = _PRE_IMPL[impl][0](x, h_pre)
        ctx.save_for_backward(x, fn, base, scale, mix, h_pre, h_res)
        ctx.cfg = (link, iters, hc_eps, impl)
        ctx.set_materialize_grads(False)  # unused outputs get None, not zero tensors
        return h, h_pre, h_post, h_res

    @staticmethod
    def backward(ctx, dh, d_hpre, d_hpost, d_hres):
        x, fn, base, scale, mix, h_pre, h_res = ctx.saved_tensors
        link, iters, hc_eps, impl = ctx.cfg
        g, link.g = link.g, None
        part, link.part = link.part, None
        if part is not None and (d_hpost is not None or d_hres is not None):
            # H_post / H_res also feed something else: add the post half's partials here
            n = x.shape[1]
            summed = part.sum(0)
            d_hpost = summed[:, :n] + (0 if d_hpost is None else d_hpost)
            d_hres = summed[:, n:].view(-1, n, n) + (0 if d_hres is None else d_hres)
            part = None
        d_pre = d_hpre
        if dh is not None:
            dh = dh.contiguous()
            _, d_pre_h = _PRE_IMPL[impl][1](x, h_pre, dh, False)  # dH_pre = <dh, x_i>
            d_pre = d_pre_h if d_pre is None else d_pre + d_pre_h
        dx, dfn, dbase, dscale = _COEF_IMPL[impl][1](
            x, fn, base, scale, mix, d_pre, d_hpost, d_hres, iters, hc_eps,
            h_pre=h_pre if dh is not None else None, dh=dh,
            h_res=h_res if g is not None else None, gout=g, post_part=part)
        return (dx, dfn.to(fn.dtype), dbase.to(base.dtype), dscale.to(scale.dtype),
                None, None, None, None, None)


class _ConnectionPostFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, h_post, h_res, link, impl):
        ctx.save_for_backward(x, y, h_post, h_res)
        ctx.cfg = (link, impl)
        return _POST_IMPL[impl][0](x, y, h_post, h_res)

    @staticmethod
    def backward(ctx, g):
        x, y, h_post, h_res = ctx.saved_tensors
        link, impl = ctx.cfg
        g = as_streams(g)  # the gradient of reduce_streams arrives as a broadcast view
        _, dy, part = _POST_IMPL[impl][1](x, y, h_post, h_res, g, False, partials=True)
        # H_res^T g is added to dx, and the partial [dH_post, dH_res] summed, by the pre
        # half's backward (which autograd runs after this one)
        link.g, link.part = g, part
        return None, dy, None, None, None, None


def _impl(x: torch.Tensor) -> str:
    return "torch" if x.dtype == torch.float64 else "triton"


@torch.compiler.disable
def connection_pre(x: torch.Tensor, fn: torch.Tensor, base: torch.Tensor, scale: torch.Tensor,
                   iters: int = 20, rms_eps: float = 1e-20, hc_eps: float = 0.0):
    """Coefficients and pre-mix of one mHC connection (Eq. 7-9 and ``h = H_pre x``).

    Returns ``(h (..., C), H_pre, H_post, H_res, link)``; pass ``link`` to
    :func:`connection_post` with the same ``x``. Excluded from ``torch.compile`` graphs
    (a graph break before and after): the hand-off through ``link`` is Python state.
    """
    lead, (n, C) = x.shape[:-2], x.shape[-2:]
    x3 = as_streams(x.reshape(-1, n, C))  # a broadcast view (first connection) stays one
    link = ConnectionLink()
    h, h_pre, h_post, h_res = _ConnectionPreFn.apply(x3, fn, base, scale, link, int(iters),
                                                     float(rms_eps), float(hc_eps), _impl(x))
    return (h.view(*lead, C), h_pre.view(*lead, n), h_post.view(*lead, n),
            h_res.view(*lead, n, n), link)


@torch.compiler.disable
def connection_post(x: torch.Tensor, y: torch.Tensor, h_post: torch.Tensor,
                    h_res: torch.Tensor, link: ConnectionLink) -> torch.Tensor:
    """Post + residual of one mHC connection, ``H_res x + H_post^T y``; pairs with
    :func:`connection_pre` (which computes this op's ``dx`` term in its backward)."""
    lead, (n, C) = x.shape[:-2], x.shape[-2:]
    x3 = as_streams(x.reshape(-1, n, C))
    y2 = y.reshape(-1, C).contiguous()
    out = _ConnectionPostFn.apply(x3, y2, h_post.reshape(-1, n), h_res.reshape(-1, n, n), link,
                                  _impl(x))
    return out.view(*lead, n, C)
