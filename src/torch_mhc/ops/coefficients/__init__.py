"""mHC coefficients: one pass over the streams to ``H_pre``, ``H_post``, ``H_res`` (Eq. 7-9).

Parameters use DeepSeek-V4's layout, so released checkpoints map one to one:

* ``fn``    ``[(n+2)n, nC]``: the projections ``phi^T``, rows ordered pre (n), post (n),
  comb (n^2); the RMSNorm weight is folded in (the norm itself is unweighted).
* ``base``  ``[(n+2)n]``: the static biases ``b_pre, b_post, b_res`` in the same order.
* ``scale`` ``[3]``: the gates ``a_pre, a_post, a_res``.

The comb block is V4's ``comb``, which is applied transposed: ``H_res = comb^T``.

Computed as the paper's efficient form (Eq. 10-19): ``x fn^T`` for all ``n^2 + 2n`` outputs
in one GEMM and ``r = ||vec x||_2 / sqrt(nC)`` from the same read of ``x``, then
``H~ = (1/r) * a * (x fn^T) + b``. Everything after the GEMM runs in float32 (float64 for
float64 inputs).

The modules: ``reference`` (the readable reference and the PyTorch twin of the kernels),
``forward`` (kernels 1-2), ``backward`` (kernel 3) and ``backward_x`` (the pass over x),
their launch configurations in ``torch_mhc.ops.tuning``; this one holds the custom ops.
"""
from __future__ import annotations

import functools

import torch

from .._backend import as_streams, compute_dtype, kernel_impl, resolve_backend
from .._library import FusedOp
# the kernels and launchers, imported from here by the fused connection, tests, benchmarks
from .backward import _coef_token_bwd, coef_backward_triton, token_backward_triton
from .backward_x import _coef_bwd_x, _coef_dfn, _coef_dx4, dx_and_dfn_triton
from .forward import _coef_gemm, _coef_token, coef_forward_triton
from .reference import (Coefficients, coef_backward_torch, coef_forward_torch,
                        mhc_coefficients_reference, split_logits)

__all__ = ["mhc_coefficients", "mhc_coefficients_reference", "split_logits"]

_COEF_IMPL = {"triton": (coef_forward_triton, coef_backward_triton),
              "torch": (coef_forward_torch, coef_backward_torch)}


# -- torch.library ops (``_library``): forward with autograd, backward as its own op ----------

def _forward_impl(x, fn, base, scale, iters, rms_eps, hc_eps):
    x = as_streams(x)
    return _COEF_IMPL[kernel_impl(x)][0](x, fn, base, scale, iters, rms_eps, hc_eps)


def _forward_fake(x, fn, base, scale, iters, rms_eps, hc_eps):
    T, n, _ = x.shape
    new = functools.partial(x.new_empty, dtype=compute_dtype(x))
    return new(T, n), new(T, n), new(T, n, n), new(T, (n + 2) * n + 1)


def _backward_impl(x, fn, base, scale, mix, d_pre, d_post, d_res, iters, hc_eps):
    x = as_streams(x)
    impl = kernel_impl(x)
    d_pre, d_post, d_res = (None if g is None else g.contiguous() for g in (d_pre, d_post, d_res))
    return _COEF_IMPL[impl][1](x, fn, base, scale, mix, d_pre, d_post, d_res, iters, hc_eps)


def coef_backward_fake(x, fn, base, scale, mix, *_):
    """Shapes of :func:`~.backward.coef_backward_triton`'s ``(dx, dfn, d_gates)`` (the fake
    impl of every op whose arguments start like it)."""
    return x.new_empty(x.shape), mix.new_empty(fn.shape), mix.new_empty(3 + fn.shape[0])


def grads_of_parameters(dfn, d_gates, fn, base, scale):
    """``(dfn, dbase, dscale)`` in the parameters' dtypes from the backward's ``dfn`` and
    ``d_gates = [dscale (3), dbase (N)]``."""
    dscale, dbase = d_gates.split((3, d_gates.shape[0] - 3))
    return dfn.to(fn.dtype), dbase.to(base.dtype), dscale.to(scale.dtype)


_coefficients_backward = FusedOp(
    "coefficients_backward", _backward_impl, coef_backward_fake,
    schema="(Tensor x, Tensor fn, Tensor base, Tensor scale, Tensor mix, Tensor? d_pre, "
           "Tensor? d_post, Tensor? d_res, int iters, float hc_eps) "
           "-> (Tensor, Tensor, Tensor)")


def save_for_input_grads(ctx, inputs, *saved) -> None:
    """``setup_context`` of an op whose inputs are ``(x, fn, base, scale, iters, rms_eps,
    hc_eps)``: saves ``x, fn, base, scale`` and ``saved`` (from its outputs) for
    :func:`input_grads`."""
    x, fn, base, scale, iters, _, hc_eps = inputs
    ctx.save_for_backward(x, fn, base, scale, *saved)
    ctx.cfg = (iters, hc_eps)
    ctx.set_materialize_grads(False)  # unused outputs get None, not zero tensors


def input_grads(ctx, backward_op, *grads):
    """The gradients of ``(x, fn, base, scale, iters, rms_eps, hc_eps)`` from
    ``backward_op(x, fn, base, scale, *saved, *grads, iters, hc_eps) -> (dx, dfn, d_gates)``
    (context of :func:`save_for_input_grads`)."""
    x, fn, base, scale, *saved = ctx.saved_tensors
    dx, dfn, d_gates = backward_op(x, fn, base, scale, *saved, *grads, *ctx.cfg)
    return (dx, *grads_of_parameters(dfn, d_gates, fn, base, scale), None, None, None)


def _setup(ctx, inputs, output):
    save_for_input_grads(ctx, inputs, output[3])


def _backward(ctx, d_pre, d_post, d_res, _d_mix):
    return input_grads(ctx, _coefficients_backward, d_pre, d_post, d_res)


#: ``torch.ops.torch_mhc.coefficients(x (T, n, C), fn, base, scale, iters, rms_eps, hc_eps)
#: -> (H_pre, H_post, H_res, mix)``; saves ``x`` and ``mix`` ((n+2)n + 1 floats per token):
#: the Sinkhorn iterations are recomputed inside the backward.
coefficients_op = FusedOp(
    "coefficients", _forward_impl, _forward_fake, _setup, _backward,
    schema="(Tensor x, Tensor fn, Tensor base, Tensor scale, int iters, float rms_eps, "
           "float hc_eps) -> (Tensor, Tensor, Tensor, Tensor)")


def mhc_coefficients(x: torch.Tensor, fn: torch.Tensor, base: torch.Tensor,
                     scale: torch.Tensor, iters: int = 20, rms_eps: float = 1e-20,
                     hc_eps: float = 0.0, backend: str = "auto") -> Coefficients:
    """``H_pre, H_post, H_res`` (float32) for streams ``x (..., n, C)``; dispatches on ``backend``.

    ``backend="triton"`` runs the fused kernels (module doc) as the custom op
    ``torch.ops.torch_mhc.coefficients``, whose backward keeps only ``x`` and ``(n+2)n + 1``
    floats per token; ``"torch"`` the reference; ``"auto"`` Triton on CUDA when installed.
    float64 inputs use the PyTorch twin of the kernels' decomposition (same op, exact
    float64 math).
    """
    if resolve_backend(backend, x) == "triton":
        lead, (n, C) = x.shape[:-2], x.shape[-2:]
        h_pre, h_post, h_res, _ = coefficients_op(x.reshape(-1, n, C), fn, base, scale,
                                                  int(iters), float(rms_eps), float(hc_eps))
        return (h_pre.view(*lead, n), h_post.view(*lead, n), h_res.view(*lead, n, n))
    return mhc_coefficients_reference(x, fn, base, scale, iters, rms_eps, hc_eps)
