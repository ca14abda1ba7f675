"""The fused mHC connection: coefficients + pre-mix before the branch, post-res after it.

``HyperConnection`` (mode ``"mhc"``, Triton backend) calls

    h, h_pre, h_post, h_res, link = connection_pre(x, fn, base, scale, ...)
    y = branch(h)
    out = connection_post(x, y, h_post, h_res, link)

Both halves are custom ops (``torch.ops.torch_mhc.connection_pre`` / ``connection_post``,
see ``_library``) over the kernels of ``coefficients``, ``pre_mix`` and ``post_res``. What
the fusion buys, per token, in units of C stream elements (n = 4):

* forward: coefficient GEMM reads x (n), pre-mix reads x, writes h (n + 1), post-res reads
  x, y and writes out (2n + 1): 4n + 2 = 18, the paper's kernels 1-5;
* backward: post-res pass reads g, x, y and writes dy (2n + 2) but *not* dx; the token
  kernel of the coefficients' backward reads dh, x for the pre-mix's share of dH_pre
  (n + 1) before it differentiates the mappings; one final pass reads x, dh, g and writes the whole
  connection's dx = H_res^T g + H_pre dh + G fn + 2 x dss (3n + 1), with dfn = G^T x in the
  same pass (6n + 4 = 28 in all). Three separate ops would write three dx tensors and
  autograd would add them (another 4n of traffic).

The hand-off of ``g = d out`` from the post half's backward to the pre half's backward is
an ordinary gradient, so that autograd, AOTAutograd and ``torch.export`` see plain data
flow: ``connection_pre`` returns a ``link`` tensor of the streams' shape that costs nothing
(one zero element seen through stride 0), ``connection_post`` takes it as an input and its
backward returns ``g`` itself as the gradient of ``link`` (and none for ``x``), so the pre
half's backward receives ``g`` as the gradient of its ``link`` output and adds ``H_res^T g``
into its single ``dx`` pass. ``dH_post`` and ``dH_res`` flow back the same way, as views of
one ``(T, n + n^2)`` sum of the post-res kernel's channel-slice partials. The halves must
be used as a pair on the same ``x``, which ``HyperConnection`` guarantees.

Saved for backward per connection: ``x`` (the stream tensor that exists anyway, not copied),
``y`` (C values per token, needed for ``dH_post``), and per token ``(n+2)n + 1`` floats of
projection / 1/r plus ``H_pre``, ``H_res`` (45 floats at n = 4, < 1% of ``x`` at C = 4096).
The branch itself keeps its input ``h`` (C). Nothing stream-sized is kept in float32.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch

from ._backend import as_streams, compute_dtype, kernel_impl
from ._library import FusedOp
from .coefficients import (_COEF_IMPL, coef_backward_fake, coef_backward_triton,
                           coef_forward_triton, input_grads, save_for_input_grads)
from .post_res import (map_grads, post_res_backward_op, post_res_forward_impl,
                       post_res_forward_triton)
from .pre_mix import _PRE_IMPL
from .tuning import stream_shape

__all__ = ["connection_pre", "connection_post"]


# -- pre half: coefficients + pre-mix ------------------------------------------------------------
#
# Both halves take streams with any leading dimensions (..., n, C) and return outputs with
# the same leading dimensions. The kernels take contiguous streams with their leading
# dimensions as they are (a broadcast view or the PyTorch twins take (T, n, C)): reshapes
# and views outside the op would each put a node into the autograd graph, and every one of
# them is host time in eager mode (a few microseconds each).

def _flat(t: Optional[torch.Tensor], *inner: int) -> Optional[torch.Tensor]:
    return None if t is None else t.reshape(-1, *inner)


def _streams(x: torch.Tensor):
    """``(xs, impl, shape)``: ``x`` as the kernels (``impl == "triton"``) or their PyTorch
    twins (``"torch"``, always ``(T, n, C)``) take it, and its launch shape."""
    xs = as_streams(x)
    impl = kernel_impl(xs)
    if impl == "torch":
        return xs.reshape(-1, *x.shape[-2:]), impl, None
    return xs, impl, stream_shape(xs)


def _lead(t: torch.Tensor, x: torch.Tensor, inner: int) -> torch.Tensor:
    """``t`` with ``x``'s leading dimensions (a no-op when it has them already)."""
    lead = x.dim() - 2
    return t if t.dim() == lead + inner else t.view(*x.shape[:lead], *t.shape[t.dim() - inner:])


def _pre_impl(x, fn, base, scale, iters, rms_eps, hc_eps):
    xs, impl, shape = _streams(x)
    if impl == "triton":
        h_pre, h_post, h_res, mix, h = coef_forward_triton(xs, fn, base, scale, iters, rms_eps,
                                                           hc_eps, shape, pre_mix=True)
    else:
        h_pre, h_post, h_res, mix = _COEF_IMPL[impl][0](xs, fn, base, scale, iters, rms_eps,
                                                        hc_eps)
        h = _PRE_IMPL[impl][0](xs, h_pre)
    if xs is not x:  # a broadcast view or the twins: (T, ...) results
        h, h_pre, h_post = _lead(h, x, 1), _lead(h_pre, x, 1), _lead(h_post, x, 1)
        h_res, mix = _lead(h_res, x, 2), _lead(mix, x, 1)
    return h, h_pre, h_post, h_res, mix, _link(x)


_ZEROS: dict = {}


def _link(x: torch.Tensor) -> torch.Tensor:
    """The stand-in through which ``g`` flows back: ``x``'s shape, one zero element (in eager
    mode one cached zero per device and dtype, seen through stride 0: nothing writes it)."""
    if type(x) is not torch.Tensor:  # traced (fake, functional): a zero of its own
        return x.new_zeros(()).expand(x.shape)
    key = (x.device, x.dtype)
    zero = _ZEROS.get(key)
    if zero is None:
        zero = x.new_zeros(())
        if not (x.is_cuda and torch.cuda.is_current_stream_capturing()):  # (filled on replay)
            _ZEROS[key] = zero
    return zero.expand(x.shape)


def _pre_fake(x, fn, base, scale, iters, rms_eps, hc_eps):
    lead, (n, C) = x.shape[:-2], x.shape[-2:]
    new = functools.partial(x.new_empty, dtype=compute_dtype(x))
    return (x.new_empty(*lead, C), new(*lead, n), new(*lead, n), new(*lead, n, n),
            new(*lead, (n + 2) * n + 1), _link(x))


def _pre_backward_impl(x, fn, base, scale, mix, h_pre, h_res, dh, d_pre, d_post, d_res, g,
                       iters, hc_eps):
    xs, impl, shape = _streams(x)
    gout = None if g is None else as_streams(g)
    if impl == "triton":
        # one token kernel: the mappings' gradients and the pre-mix's <dh, x_i>; one dx pass
        dh = None if dh is None else dh.contiguous()
        dx, dfn, d_gates = coef_backward_triton(
            xs, fn, base, scale, mix, d_pre, d_post, d_res, iters, hc_eps,
            h_pre=h_pre if dh is not None else None, dh=dh,
            h_res=h_res if g is not None else None, gout=gout, shape=shape)
        return _lead(dx, x, 2), dfn, d_gates
    n, C = x.shape[-2:]
    mix, h_pre, h_res = _flat(mix, mix.shape[-1]), _flat(h_pre, n), _flat(h_res, n, n)
    d_pre, d_post, d_res = _flat(d_pre, n), _flat(d_post, n), _flat(d_res, n, n)
    dh = None if dh is None else dh.reshape(-1, C)
    dx, dfn, d_gates = _COEF_IMPL[impl][1](
        xs, fn, base, scale, mix, d_pre, d_post, d_res, iters, hc_eps,
        h_pre=h_pre if dh is not None else None, dh=dh,
        h_res=h_res if g is not None else None, gout=_flat(gout, n, C))
    return dx.view(x.shape), dfn, d_gates


_pre_backward = FusedOp(
    "connection_pre_backward", _pre_backward_impl, coef_backward_fake,
    schema="(Tensor x, Tensor fn, Tensor base, Tensor scale, Tensor mix, Tensor h_pre, "
           "Tensor h_res, Tensor? dh, Tensor? d_pre, Tensor? d_post, Tensor? d_res, "
           "Tensor? g, int iters, float hc_eps) -> (Tensor, Tensor, Tensor)")


def _pre_setup(ctx, inputs, output):
    _, h_pre, _, h_res, mix, _ = output
    save_for_input_grads(ctx, inputs, mix, h_pre, h_res)


def _pre_backward_formula(ctx, dh, d_pre, d_post, d_res, _d_mix, g):
    return input_grads(ctx, _pre_backward, dh, d_pre, d_post, d_res, g)


_connection_pre = FusedOp(
    "connection_pre", _pre_impl, _pre_fake, _pre_setup, _pre_backward_formula,
    schema="(Tensor x, Tensor fn, Tensor base, Tensor scale, int iters, float rms_eps, "
           "float hc_eps) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")


# -- post half: post-res -------------------------------------------------------------------------

def _post_impl(x, link, y, h_post, h_res):
    return post_forward(x, y, h_post, h_res)


def _post_setup(ctx, inputs, output):
    x, _, y, h_post, h_res = inputs
    ctx.save_for_backward(x, y, h_post, h_res)


def _post_backward_formula(ctx, g):
    x, y, h_post, h_res = ctx.saved_tensors
    # no dx here: H_res^T g is added by the pre half's dx pass, which receives g as the
    # gradient of ``link``
    _, dy, d_map = post_res_backward_op(x, y, h_post, h_res, g, False)
    d_post, d_res = map_grads(d_map, h_post.shape)
    return None, g, dy, d_post, d_res


_connection_post = FusedOp(
    "connection_post", _post_impl, lambda x, link, y, h_post, h_res: x.new_empty(x.shape),
    _post_setup, _post_backward_formula,
    schema="(Tensor x, Tensor link, Tensor y, Tensor h_post, Tensor h_res) -> Tensor")


# -- the two halves as HyperConnection calls them ------------------------------------------------

def connection_pre(x: torch.Tensor, fn: torch.Tensor, base: torch.Tensor, scale: torch.Tensor,
                   iters: int = 20, rms_eps: float = 1e-20, hc_eps: float = 0.0):
    """Coefficients and pre-mix of one mHC connection (Eq. 7-9 and ``h = H_pre x``).

    Returns ``(h (..., C), H_pre, H_post, H_res, link)``; pass ``link`` to
    :func:`connection_post` with the same ``x``.
    """
    h, h_pre, h_post, h_res, _, link = _connection_pre(
        x, fn, base, scale, int(iters), float(rms_eps), float(hc_eps))
    return h, h_pre, h_post, h_res, link


def connection_post(x: torch.Tensor, y: torch.Tensor, h_post: torch.Tensor,
                    h_res: torch.Tensor, link: torch.Tensor) -> torch.Tensor:
    """Post + residual of one mHC connection, ``H_res x + H_post^T y``; pairs with
    :func:`connection_pre` (which computes this op's ``dx`` term in its backward)."""
    return _connection_post(x, link, y, h_post, h_res)


def post_forward(x: torch.Tensor, y: torch.Tensor, h_post: torch.Tensor,
                 h_res: torch.Tensor) -> torch.Tensor:
    """The post half's forward alone (no autograd): the implementation of
    :func:`connection_post`, so stream recomputation (``torch_mhc.nn.recompute``) rebuilds
    streams with it bit for bit."""
    xs, impl, shape = _streams(x)
    if impl == "triton":
        out = post_res_forward_triton(xs, y.contiguous(), h_post.contiguous(),
                                      h_res.contiguous(), shape)
    else:
        n, C = x.shape[-2:]
        out = post_res_forward_impl(xs, y.reshape(-1, C), h_post.reshape(-1, n),
                                    h_res.reshape(-1, n, n))
    return _lead(out, x, 2)
