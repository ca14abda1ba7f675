"""Statistics of the mappings ``H_res``, ``H_pre``, ``H_post`` over the tokens of a batch.

* distance from doubly stochastic: ``|row sum - 1|`` and ``|column sum - 1|`` (max and mean
  over rows/columns and tokens), and the most negative entry (a doubly stochastic matrix
  has none);
* distance from the identity: ``||H - I||_F``, averaged over tokens (0 = plain residual);
* entropy: mean over rows and tokens of the Shannon entropy (nats) of ``|row| / sum|row|``;
  0 for a permutation (each stream copied), ``log n`` for uniform mixing;
* ranges of ``H_pre`` and ``H_post`` (min, mean, max over tokens and streams).
"""
from __future__ import annotations

from typing import Dict, List

import torch

__all__ = ["hres_stats", "range_stats", "mean_matrix"]


def hres_stats(h: torch.Tensor) -> Dict[str, float]:
    """Scalar statistics of ``H_res`` of shape ``(..., n, n)`` (see the module docstring)."""
    h = h.detach().to(torch.float64).reshape(-1, h.shape[-2], h.shape[-1])
    n = h.shape[-1]
    row_err = (h.sum(-1) - 1).abs()
    col_err = (h.sum(-2) - 1).abs()
    eye = torch.eye(n, dtype=h.dtype, device=h.device)
    a = h.abs()
    p = a / a.sum(-1, keepdim=True).clamp_min(1e-300)
    ent = -(p * p.clamp_min(1e-300).log()).sum(-1)
    return {
        "row_err_max": float(row_err.max()), "row_err_mean": float(row_err.mean()),
        "col_err_max": float(col_err.max()), "col_err_mean": float(col_err.mean()),
        "dist_identity": float(torch.linalg.matrix_norm(h - eye).mean()),
        "entropy": float(ent.mean()), "min_entry": float(h.min()),
        "diag_mean": float(torch.diagonal(h, dim1=-2, dim2=-1).mean()),
    }


def range_stats(x: torch.Tensor) -> Dict[str, float]:
    """``{"min", "mean", "max"}`` of a mapping over all tokens and streams."""
    x = x.detach().to(torch.float64)
    return {"min": float(x.min()), "mean": float(x.mean()), "max": float(x.max())}


def mean_matrix(h: torch.Tensor) -> List[List[float]]:
    """``H_res`` averaged over tokens, as nested lists (for heat-maps in the logs)."""
    h = h.detach().to(torch.float64).reshape(-1, h.shape[-2], h.shape[-1])
    return h.mean(0).tolist()
