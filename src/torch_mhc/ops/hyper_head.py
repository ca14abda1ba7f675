"""Head collapse: the ``n`` residual streams -> one hidden state before the final norm.

DeepSeek-V4 convention (transformers' ``DeepseekV4HyperHead``): with the
streams ``x (..., n, C)`` flattened to ``vec x`` (length ``nC``) and RMS-normalised without a
weight (epsilon ``rms_eps``),

    w = sigmoid(hc_scale * (RMSNorm(vec x) @ hc_fn^T) + hc_base) + eps        (..., n)
    out = sum_i w_i x_i                                                        (..., C)

Parameters keep V4's shapes: ``hc_fn [n, nC]``, ``hc_base [n]``, ``hc_scale [1]``. The
weights are computed in float32; the weighted sum goes through :func:`torch_mhc.ops.pre_mix`
(the same op as the branch input ``H_pre x`` of Eq. 3), so it uses the fused kernel there
whenever one is available.
"""
from __future__ import annotations

import torch

from .pre_mix import pre_mix

__all__ = ["hyper_head_weights_reference", "hyper_head", "hyper_head_reference"]


def _check(x: torch.Tensor, hc_fn: torch.Tensor, hc_base: torch.Tensor,
           hc_scale: torch.Tensor) -> None:
    if x.dim() < 2:
        raise ValueError(f"hyper_head expects streams (..., n, C), got shape {tuple(x.shape)}")
    n, c = x.shape[-2], x.shape[-1]
    if tuple(hc_fn.shape) != (n, n * c) or tuple(hc_base.shape) != (n,) or hc_scale.numel() != 1:
        raise ValueError(
            f"hyper_head: streams (..., {n}, {c}) need hc_fn [{n}, {n * c}], hc_base [{n}], "
            f"hc_scale [1]; got {tuple(hc_fn.shape)}, {tuple(hc_base.shape)}, "
            f"{tuple(hc_scale.shape)}")


def hyper_head_weights_reference(x: torch.Tensor, hc_fn: torch.Tensor, hc_base: torch.Tensor,
                                 hc_scale: torch.Tensor, rms_eps: float = 1e-6,
                                 eps: float = 1e-6) -> torch.Tensor:
    """Collapse weights ``w (..., n)`` in float32, computed in V4's order of operations
    (normalise the flattened streams, then project)."""
    _check(x, hc_fn, hc_base, hc_scale)
    flat = x.flatten(-2).float()
    flat = flat * torch.rsqrt(flat.square().mean(-1, keepdim=True) + rms_eps)
    mix = flat @ hc_fn.float().t()
    return torch.sigmoid(mix * hc_scale.float().reshape(()) + hc_base.float()) + eps


def hyper_head_reference(x: torch.Tensor, hc_fn: torch.Tensor, hc_base: torch.Tensor,
                         hc_scale: torch.Tensor, rms_eps: float = 1e-6,
                         eps: float = 1e-6) -> torch.Tensor:
    """Readable PyTorch form: ``sum_i w_i x_i`` in float32, returned in ``x``'s dtype."""
    w = hyper_head_weights_reference(x, hc_fn, hc_base, hc_scale, rms_eps, eps)
    return (w.unsqueeze(-1) * x.float()).sum(-2).to(x.dtype)


def hyper_head(x: torch.Tensor, hc_fn: torch.Tensor, hc_base: torch.Tensor,
               hc_scale: torch.Tensor, rms_eps: float = 1e-6, eps: float = 1e-6,
               backend: str = "auto") -> torch.Tensor:
    """Collapse streams ``x (..., n, C)`` to ``(..., C)``; the weighted sum dispatches on
    ``backend`` like :func:`torch_mhc.ops.pre_mix`."""
    w = hyper_head_weights_reference(x, hc_fn, hc_base, hc_scale, rms_eps, eps)
    return pre_mix(x, w, backend)
