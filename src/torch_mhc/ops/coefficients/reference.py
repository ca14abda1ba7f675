"""The coefficients in PyTorch: the readable reference (Eq. 7-9) and the PyTorch twin of the
fused kernels' decomposition (explicit forward / backward formulas, any dtype: float64 for
gradcheck of the autograd glue, and the path the fused op takes where Triton cannot run).
"""
from __future__ import annotations

from typing import Tuple

import torch

from .._backend import compute_dtype
from ..sinkhorn import sinkhorn, sinkhorn_vjp

__all__ = ["mhc_coefficients_reference", "split_logits", "coef_forward_torch",
           "coef_backward_torch"]

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
    """Readable PyTorch form of Eq. 7-9 (float32 math; float64 stays float64).

    Layouts: :mod:`torch_mhc.ops.coefficients`.

    Returns ``H_pre (..., n)``, ``H_post (..., n)``, ``H_res (..., n, n)`` in float32, with
    ``new_stream_i = sum_j H_res[i, j] stream_j``.
    """
    n = x.shape[-2]
    dt = compute_dtype(x, fn, base, scale)
    xf = x.flatten(-2).to(dt)
    inv_r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + rms_eps)  # 1 / RMS(vec x)
    mix = (xf @ fn.to(dt).t()) * inv_r
    pre, post, comb = split_logits(mix, scale.to(dt), base.to(dt), n)
    h_pre = torch.sigmoid(pre) + hc_eps
    h_post = 2.0 * torch.sigmoid(post)
    h_res = sinkhorn(comb.transpose(-1, -2), iters, eps=hc_eps, check_finite=False)
    return h_pre, h_post, h_res


def coef_forward_torch(x, fn, base, scale, iters, rms_eps, hc_eps):
    """PyTorch twin of the fused forward (same outputs, the input's float dtype)."""
    T, n, C = x.shape
    dt = compute_dtype(x)
    xf = x.reshape(T, n * C).to(dt)
    proj = xf @ fn.to(dt).t()
    inv_r = torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) / (n * C) + rms_eps)
    pre, post, comb = split_logits(proj * inv_r, scale.to(dt), base.to(dt), n)
    h_pre = torch.sigmoid(pre) + hc_eps
    h_post = 2.0 * torch.sigmoid(post)
    h_res = sinkhorn(comb.transpose(-1, -2), iters, eps=hc_eps, check_finite=False)
    return h_pre, h_post, h_res.contiguous(), torch.cat([proj, inv_r], -1)


def coef_backward_torch(x, fn, base, scale, mix, d_pre, d_post, d_res, iters, hc_eps,
                        h_pre=None, dh=None, h_res=None, gout=None):
    """PyTorch twin of the fused backward (the formulas of ``coefficients.backward``); with
    ``dh``, the pre-mix's share of ``dH_pre`` (``<dh, x_i>``) is added to ``d_pre``."""
    T, n, C = x.shape
    K, N = n * C, (n + 2) * n
    dt = mix.dtype
    if dh is not None:
        d_pre_h = torch.einsum("tc,tic->ti", dh.to(dt), x.to(dt))
        d_pre = d_pre_h if d_pre is None else d_pre.to(dt) + d_pre_h
    proj, inv_r = mix[:, :N], mix[:, N:]
    a, b = scale.to(dt), base.to(dt)
    gate = torch.cat([a[0].expand(n), a[1].expand(n), a[2].expand(n * n)])
    logits = gate * proj * inv_r + b
    zero = torch.zeros((), dtype=dt, device=mix.device)
    d_pre, d_post = (zero if g is None else g.to(dt) for g in (d_pre, d_post))
    s_pre, s_post = torch.sigmoid(logits[:, :n]), torch.sigmoid(logits[:, n:2 * n])
    d_comb = torch.zeros_like(logits[:, 2 * n:])
    if d_res is not None:  # H_res = sinkhorn(comb^T)
        comb_t = logits[:, 2 * n:].unflatten(-1, (n, n)).transpose(-1, -2)
        d_comb = sinkhorn_vjp(comb_t, d_res, iters, hc_eps).transpose(-1, -2).flatten(1)
    dlogit = torch.cat([d_pre * s_pre * (1 - s_pre), 2.0 * d_post * s_post * (1 - s_post),
                        d_comb], -1)
    G = dlogit * gate * inv_r
    dinv = (dlogit * gate * proj).sum(-1, keepdim=True)
    dss = -0.5 * dinv * inv_r ** 3 / K
    xf = x.reshape(T, K).to(dt)
    dx = G @ fn.to(dt) + 2.0 * xf * dss
    dx = dx.view(T, n, C)
    if dh is not None:
        dx = dx + h_pre.to(dt).unsqueeze(-1) * dh.to(dt).unsqueeze(-2)
    if gout is not None:
        dx = dx + torch.einsum("tji,tjc->tic", h_res.to(dt), gout.to(dt))
    dfn = G.t() @ xf
    m = dlogit * proj * inv_r
    dscale = torch.stack([m[:, :n].sum(), m[:, n:2 * n].sum(), m[:, 2 * n:].sum()])
    return dx.to(x.dtype), dfn, torch.cat([dscale, dlogit.sum(0)])
