"""mHC coefficients: one pass over the streams to ``H_pre``, ``H_post``, ``H_res`` (Eq. 7-9).

Parameters use DeepSeek-V4's layout (spec section 6) so released checkpoints map one to one:

* ``fn``    ``[(n+2)n, nC]``: the projections ``phi^T``, rows ordered pre (n), post (n),
  comb (n^2); the RMSNorm weight is folded in (the norm itself is unweighted).
* ``base``  ``[(n+2)n]``: the static biases ``b_pre, b_post, b_res`` in the same order.
* ``scale`` ``[3]``: the gates ``a_pre, a_post, a_res``.

The comb block is V4's ``comb``, which is applied transposed: ``H_res = comb^T``.

Computed as the paper's efficient form (Eq. 10-19): ``x fn^T`` for all ``n^2 + 2n`` outputs
in one GEMM and ``r = ||vec x||_2 / sqrt(nC)`` from the same read of ``x``, then
``H~ = (1/r) * a * (x fn^T) + b``. Everything after the GEMM runs in float32.
"""
from __future__ import annotations

from typing import Tuple

import torch

from ._backend import resolve_backend
from .sinkhorn import sinkhorn

__all__ = ["mhc_coefficients", "mhc_coefficients_reference", "split_logits"]

Coefficients = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def split_logits(mix: torch.Tensor, scale: torch.Tensor, base: torch.Tensor, n: int):
    """Gate and bias the projected ``(..., (n+2)n)`` values into pre, post and comb logits."""
    pre = scale[0] * mix[..., :n] + base[:n]
    post = scale[1] * mix[..., n:2 * n] + base[n:2 * n]
    comb = scale[2] * mix[..., 2 * n:] + base[2 * n:]
    return pre, post, comb.unflatten(-1, (n, n))


def mhc_coefficients_reference(x: torch.Tensor, fn: torch.Tensor, base: torch.Tensor,
                               scale: torch.Tensor, iters: int = 20, rms_eps: float = 1e-20,
                               hc_eps: float = 0.0) -> Coefficients:
    """Readable PyTorch form of Eq. 7-9 (float32 math). See module docstring for layouts.

    Returns ``H_pre (..., n)``, ``H_post (..., n)``, ``H_res (..., n, n)`` in float32, with
    ``new_stream_i = sum_j H_res[i, j] stream_j``.
    """
    n = x.shape[-2]
    xf = x.flatten(-2).float()
    inv_r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + rms_eps)  # 1 / RMS(vec x)
    mix = (xf @ fn.float().t()) * inv_r
    pre, post, comb = split_logits(mix, scale.float(), base.float(), n)
    h_pre = torch.sigmoid(pre) + hc_eps
    h_post = 2.0 * torch.sigmoid(post)
    h_res = sinkhorn(comb.transpose(-1, -2), iters, eps=hc_eps, check_finite=False)
    return h_pre, h_post, h_res


def mhc_coefficients(x: torch.Tensor, fn: torch.Tensor, base: torch.Tensor,
                     scale: torch.Tensor, iters: int = 20, rms_eps: float = 1e-20,
                     hc_eps: float = 0.0, backend: str = "auto") -> Coefficients:
    """``H_pre, H_post, H_res`` for streams ``x (..., n, C)``; dispatches on ``backend``."""
    if resolve_backend(backend, x) == "triton":
        raise NotImplementedError("the fused Triton coefficient kernel is not available yet")
    return mhc_coefficients_reference(x, fn, base, scale, iters, rms_eps, hc_eps)
