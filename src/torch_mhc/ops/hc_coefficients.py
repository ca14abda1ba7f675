"""Unconstrained Hyper-Connections coefficients (Zhu et al., arXiv 2409.19606; mHC Eq. 5).

Per stream ``j`` the input is RMS-normalised over its last dim (``x~_j``, unweighted: the
weight folds into ``theta``), then

* ``H_pre[j]     = a_pre  * tanh(theta_pre  . x~_j) + b_pre[j]``
* ``H_post[j]    = a_post * tanh(theta_post . x~_j) + b_post[j]``
* ``H_res[i, j]  = a_res  * tanh(theta_res_i . x~_j) + b_res[i, j]``

with ``theta`` ``[n + 2, C]`` (rows pre, post, res_0..res_{n-1}), gates ``alpha`` ``[3]``
and biases ``bias`` ``[(n+2)n]`` (pre, post, res row-major). No constraint on ``H_res``:
this is the baseline whose composite gain explodes.
"""
from __future__ import annotations

import torch

from ._backend import compute_dtype

__all__ = ["hc_coefficients_reference"]


def hc_coefficients_reference(x: torch.Tensor, theta: torch.Tensor, alpha: torch.Tensor,
                              bias: torch.Tensor, rms_eps: float = 1e-6):
    """``H_pre (..., n)``, ``H_post (..., n)``, ``H_res (..., n, n)`` of HC in float32
    (float64 if any input is float64)."""
    n = x.shape[-2]
    dt = compute_dtype(x, theta, alpha, bias)
    xf = x.to(dt)
    xn = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + rms_eps)
    d = torch.tanh(xn @ theta.to(dt).t())  # (..., n_streams j, n + 2)
    alpha, bias = alpha.to(dt), bias.to(dt)
    h_pre = alpha[0] * d[..., 0] + bias[:n]
    h_post = alpha[1] * d[..., 1] + bias[n:2 * n]
    h_res = alpha[2] * d[..., 2:].transpose(-1, -2) + bias[2 * n:].view(n, n)
    return h_pre, h_post, h_res
