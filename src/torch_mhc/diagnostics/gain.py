"""Amax gain magnitude of ``H_res`` and of its composite over depth (mHC paper, Sec. 3.1).

For a matrix ``H`` acting on the streams (``x_{l+1} = H x_l + ...``):

* forward gain  = max absolute row sum    ``max_i sum_j |H[i, j]|`` (how much a stream can
  grow going forward: the infinity-norm of ``H``);
* backward gain = max absolute column sum ``max_j sum_i |H[i, j]|`` (the same for the
  gradient, which flows through ``H^T``: the 1-norm of ``H``).

The composite mapping of layers ``1..l`` is ``P_l = H_res^(l) ... H_res^(1)``, taken per
token (each token has its own ``H_res`` at every layer): how the input reaches layer l.
The paper's Fig. 3 plots the other direction, layers ``l..L``: ``Q_l = H_res^(L) ...
H_res^(l)``, how layer l reaches the output (keys ``out_*``). Both end in the same full
product ``P_L = Q_1``; their maxima over layers can differ. A doubly stochastic ``H_res``
(mHC) has both gains equal to 1, and so does every product of them; unconstrained HC can
grow without bound (the paper measures peaks near 3000 at 27B, Fig. 3; mHC about 1.6, Fig. 7).
The product is accumulated in float64.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

__all__ = ["amax_gain", "composite_products", "composite_to_output", "gain_profile"]


def amax_gain(h: torch.Tensor):
    """``(forward, backward)`` gains of ``(..., n, n)`` matrices, each of shape ``(...)``."""
    a = h.abs()
    return a.sum(dim=-1).amax(dim=-1), a.sum(dim=-2).amax(dim=-1)


def composite_products(h_res: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """``[P_1, ..., P_L]`` with ``P_l = H^(l) ... H^(1)``, per token, in float64.

    Each element of ``h_res`` has shape ``(..., n, n)`` with the same leading (token) dims.
    """
    out, prod = [], None
    for h in h_res:
        h = h.detach().to(torch.float64)
        prod = h if prod is None else h @ prod
        out.append(prod)
    return out


def composite_to_output(h_res: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """``[Q_1, ..., Q_L]`` with ``Q_l = H^(L) ... H^(l)`` (the paper's Fig. 3), float64."""
    out, prod = [], None
    for h in reversed(h_res):
        h = h.detach().to(torch.float64)
        prod = h if prod is None else prod @ h
        out.append(prod)
    return out[::-1]


def _reduce(g: torch.Tensor) -> Dict[str, float]:
    g = g.reshape(-1)
    return {"max": float(g.max()), "mean": float(g.mean())}


_PREFIXES = ("", "comp_", "out_")  # single layer, layers 1..l, layers l..L


def gain_profile(h_res: Optional[Sequence[torch.Tensor]], num_layers: Optional[int] = None
                 ) -> Dict[str, List[float]]:
    """Per-layer gains, single layer and composite, maximised and averaged over tokens.

    Returns lists of length ``L`` under the keys ``fwd_max, fwd_mean, bwd_max, bwd_mean``
    (single layer ``H_res^(l)``) and ``comp_fwd_max, comp_fwd_mean, comp_bwd_max,
    comp_bwd_mean`` (composite ``P_l``) and ``out_fwd_max, ...`` (composite ``Q_l``, the
    paper's direction). ``h_res=None`` stands for the plain residual
    (no ``H_res``, i.e. the identity): every gain is exactly 1.0 for ``num_layers`` layers.
    """
    keys = ("fwd_max", "fwd_mean", "bwd_max", "bwd_mean")
    if h_res is None:
        if num_layers is None:
            raise ValueError("num_layers is needed when there is no H_res")
        return {f"{p}{k}": [1.0] * num_layers for p in _PREFIXES for k in keys}
    prof: Dict[str, List[float]] = {f"{p}{k}": [] for p in _PREFIXES for k in keys}
    for prefix, mats in (("", [h.detach().to(torch.float64) for h in h_res]),
                         ("comp_", composite_products(h_res)),
                         ("out_", composite_to_output(h_res))):
        for m in mats:
            fwd, bwd = amax_gain(m)
            for name, g in (("fwd", fwd), ("bwd", bwd)):
                r = _reduce(g)
                prof[f"{prefix}{name}_max"].append(r["max"])
                prof[f"{prefix}{name}_mean"].append(r["mean"])
    return prof
