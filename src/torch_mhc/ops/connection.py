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

Backward chain (between connections). When connection l's input is connection l-1's output
(``connection_post`` leaves its link on the tensor it returns; ``connection_pre`` takes it),
the ``dx_l`` that l's dx pass writes is l-1's ``g``, and while its tiles are in registers
the pass also does l-1's post-res backward: ``dy = sum_i H_post_i g_i`` and partial
``dH_post_i = <g_i, y>`` (reading ``y``, writing ``dy``). l-1's post half then only hands
these over, and its pre half gets ``dH_res[i, j] = <g_i, x_j>`` from the pass over ``x`` and
``dh`` that it makes anyway for ``dH_pre``, now also reading ``g``
(``post_res.res_pre_backward_triton``). Backward traffic of a chained connection: 2 (y, dy)
+ 2n + 1 (g, x, dh) + 3n + 1 (dx pass) = 5n + 4 units instead of 6n + 4, one read of ``g``
less, and one kernel launch less. The chain is used only if the gradient that reaches
l-1's post half *is* that ``dx_l`` (same memory, layout and version); if other consumers of
the stream added to it, or a hook replaced it, l-1 runs its own post-res backward as above.
``TORCH_MHC_BACKWARD_CHAIN=0`` (read at import) turns the chain off.

Saved for backward per connection: ``x`` (the stream tensor that exists anyway, not copied),
``y`` (C values per token, needed for ``dH_post``), and per token ``(n+2)n + 1`` floats of
projection / 1/r plus ``H_pre``, ``H_res`` (45 floats at n = 4, < 1% of ``x`` at C = 4096).
The branch itself keeps its input ``h`` (C). Nothing stream-sized is kept in float32.
``torch.compile`` treats both halves as opaque (graph break at each; see ``connection_pre``).
"""
from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch

from ._backend import as_streams
from .coefficients import _COEF_IMPL, Partials
from .post_res import _POST_IMPL
from .pre_mix import _PRE_IMPL

__all__ = ["connection_pre", "connection_post", "ConnectionLink", "backward_chain"]

_CHAIN_ATTR = "_torch_mhc_chain"  # on connection_post's output: its link, for the next pre half
#: backward chain on (module doc); ``TORCH_MHC_BACKWARD_CHAIN=0`` turns it off (A/B timing)
BACKWARD_CHAIN = os.environ.get("TORCH_MHC_BACKWARD_CHAIN", "1") != "0"


@contextlib.contextmanager
def backward_chain(enabled: bool):
    """Connections whose forward runs inside use the backward chain (module doc) or not;
    the default is :data:`BACKWARD_CHAIN`. For A/B timing (``mhc bench`` variant
    ``mhc-triton-nochain``); gradients are the same either way."""
    global BACKWARD_CHAIN
    old, BACKWARD_CHAIN = BACKWARD_CHAIN, bool(enabled)
    try:
        yield
    finally:
        BACKWARD_CHAIN = old


class ConnectionLink:
    """One connection's hand-offs between its two halves (and its neighbour).

    ``g``, ``part``: ``g = d out`` and the post half's partial ``[dH_post, dH_res]``, from
    the post half's backward to the pre half's. Backward chain: ``y``, ``h_post`` (this
    connection's branch output and ``H_post``, kept from the post half's forward), and
    ``chained = (dx, dy, dH_post partials)``, left by the next connection's ``dx`` pass for
    this connection's post half, which hands ``post_part`` on to the pre half.
    """

    __slots__ = ("g", "part", "post_part", "y", "h_post", "chained")

    def __init__(self):
        self.g: Optional[torch.Tensor] = None
        self.part: Optional[torch.Tensor] = None  # (S, T, n + n^2) partial [dH_post, dH_res]
        self.post_part: Optional[Partials] = None  # chained: (S, T, n) partial dH_post
        self.y: Optional[torch.Tensor] = None
        self.h_post: Optional[torch.Tensor] = None
        self.chained: Optional[tuple] = None


def _plus(d, extra, shape):
    """A gradient (full, :class:`Partials` or None) plus one from another consumer."""
    if extra is None:
        return d
    if d is None:
        return extra
    return (d.t.sum(0).reshape(shape) if isinstance(d, Partials) else d) + extra


def _same_tensor(g: torch.Tensor, t: torch.Tensor) -> bool:
    """``g`` holds exactly ``t``'s values: the same memory, layout and version (``t`` is
    kept alive, so its memory cannot have been reused; an in-place change bumps the version
    both share)."""
    return (g.data_ptr() == t.data_ptr() and g.shape == t.shape and g.stride() == t.stride()
            and g.dtype == t.dtype and g._version == t._version)


class _ConnectionPreFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, fn, base, scale, link, prev, iters, rms_eps, hc_eps, impl):
        coef_fwd = _COEF_IMPL[impl][0]
        h_pre, h_post, h_res, mix = coef_fwd(x, fn, base, scale, iters, rms_eps, hc_eps)
        h = _PRE_IMPL[impl][0](x, h_pre)
        ctx.save_for_backward(x, fn, base, scale, mix, h_pre, h_res)
        ctx.cfg = (link, prev, iters, hc_eps, impl)
        ctx.set_materialize_grads(False)  # unused outputs get None, not zero tensors
        return h, h_pre, h_post, h_res

    @staticmethod
    def backward(ctx, dh, d_hpre, d_hpost, d_hres):
        x, fn, base, scale, mix, h_pre, h_res = ctx.saved_tensors
        link, prev, iters, hc_eps, impl = ctx.cfg
        T, n, _ = x.shape
        g, link.g = link.g, None
        part, link.part = link.part, None
        post_part, link.post_part = link.post_part, None
        if post_part is not None:
            # chained: dy and dH_post came from the next connection's dx pass; one pass over
            # g, x and dh gives dH_pre and dH_res (instead of the post-res backward's read of
            # g, x, y and the pre-mix backward's of x, dh)
            rp = _POST_IMPL[impl][2](x, g, x.new_zeros(T, x.shape[2]) if dh is None
                                     else dh.contiguous())
            d_pre, d_post, d_res = Partials(rp[:, :, :n]), post_part, Partials(rp[:, :, n:])
        else:
            d_post = None if part is None else Partials(part[:, :, :n])
            d_res = None if part is None else Partials(part[:, :, n:])
            d_pre = None
            if dh is not None:
                _, d_pre = _PRE_IMPL[impl][1](x, h_pre, dh.contiguous(), False)  # <dh, x_i>
        # H_pre / H_post / H_res may also feed something else: add those gradients
        d_pre = _plus(d_pre, d_hpre, (T, n))
        d_post = _plus(d_post, d_hpost, (T, n))
        d_res = _plus(d_res, d_hres, (T, n, n))
        chain = None
        if prev is not None and prev.y is not None:  # y is dropped once prev's backward ran
            chain = (prev.y, prev.h_post)
        dx, dfn, dbase, dscale, prev_out = _COEF_IMPL[impl][1](
            x, fn, base, scale, mix, d_pre, d_post, d_res, iters, hc_eps,
            h_pre=h_pre if dh is not None else None, dh=None if dh is None else dh.contiguous(),
            h_res=h_res if g is not None else None, gout=g, prev=chain)
        if prev_out is not None:
            prev.chained = (dx, *prev_out)
        return (dx, dfn.to(fn.dtype), dbase.to(base.dtype), dscale.to(scale.dtype),
                None, None, None, None, None, None)


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
        chained, link.chained = link.chained, None
        link.y = link.h_post = None
        g = as_streams(g)  # the gradient of reduce_streams arrives as a broadcast view
        if chained is not None and _same_tensor(g, chained[0]):
            # the next connection's dx pass did this backward (dy, partial dH_post) from g;
            # dH_res is left to the pre half's pass over g and x
            link.g, link.post_part = g, chained[2]
            return None, chained[1], None, None, None, None
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
    If ``x`` is the output of :func:`connection_post`, this connection's backward also does
    that connection's post-res backward (module doc, "backward chain").
    """
    lead, (n, C) = x.shape[:-2], x.shape[-2:]
    prev = x.__dict__.pop(_CHAIN_ATTR, None)
    x3 = as_streams(x.reshape(-1, n, C))  # a broadcast view (first connection) stays one
    if prev is not None and (prev.y is None or prev.y.shape != (x3.shape[0], C)
                             or prev.y.device != x.device):
        prev = None
    link = ConnectionLink()
    h, h_pre, h_post, h_res = _ConnectionPreFn.apply(x3, fn, base, scale, link, prev, int(iters),
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
    hp = h_post.reshape(-1, n)
    out = _ConnectionPostFn.apply(x3, y2, hp, h_res.reshape(-1, n, n), link, _impl(x))
    out = out.view(*lead, n, C)
    if BACKWARD_CHAIN and out.requires_grad:  # the next pre half may do this post backward
        link.y, link.h_post = y2, hp.contiguous()
        out.__dict__[_CHAIN_ATTR] = link
    return out
