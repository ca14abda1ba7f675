"""Diagnostics in the mHC paper's conventions, and the per-step stability metrics.

Paper convention (arXiv 2512.24880, Sec. 3.1, Fig. 3 and 7): the Amax gain magnitude of the
composite mapping from layer ``l`` to the last layer ``L``, ``Q_l = H_res^(L) ... H_res^(l)``,
per token, then **averaged over the tokens of one sequence** (every block unrolled into its
attention and FFN connections, as ``connections()`` lists them). :func:`paper_gains` does
that for each sequence of a batch and reports, per layer, the largest and the mean of these
per-sequence averages; ``comp_fwd_max`` (the largest over layers of the former) is the
number the paper quotes (HC ~3000 at 27B, mHC ~1.6). The current diagnostics
(:mod:`.gain`) keep the other reductions (the maximum over every token, layers ``1..l``).
The gain is taken per token and then averaged (not the gain of the averaged matrix).

Per-step metrics (:func:`step_stats`), cheap enough for every training step, as an
independent 100-layer study tracked them: the ratio of the gradient norm of the last
connection's parameters (its branch included) to that of the first, and the mean over
layers and tokens of the Frobenius norm ``||H_res||_F`` (``sqrt(n)`` for the identity, 1 for
uniform mixing ``1/n``; a collapse of this norm marks the mixing drifting away).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from .gain import amax_gain, composite_to_output

__all__ = ["paper_gains", "hres_frobenius", "step_stats"]


def _per_sequence_mean(g: torch.Tensor) -> torch.Tensor:
    """Token mean per sequence: ``(B, T)`` -> ``(B,)``; fewer dims count as one sequence."""
    return g.mean(-1).reshape(-1) if g.dim() >= 2 else g.reshape(-1).mean().reshape(1)


def paper_gains(h_res: Optional[Sequence[torch.Tensor]], num_layers: Optional[int] = None
                ) -> Dict[str, object]:
    """Gains in the paper's convention from per-layer ``H_res`` of shape ``(B, T, n, n)``.

    Returns per-layer lists (length ``L``): ``fwd_max, fwd_mean, bwd_max, bwd_mean`` of the
    single layer ``H_res^(l)`` and ``comp_fwd_max, comp_fwd_mean, comp_bwd_max,
    comp_bwd_mean`` of ``Q_l = H^(L) ... H^(l)``, each the largest (``_max``) or the mean
    (``_mean``) over the sequences of the token-averaged gain, and the scalars
    ``comp_fwd_peak`` / ``comp_bwd_peak`` (largest over layers and sequences). ``None``
    stands for the plain residual (identity mappings): every gain is exactly 1.0.
    """
    keys = ("fwd_max", "fwd_mean", "bwd_max", "bwd_mean")
    names = [f"{p}{k}" for p in ("", "comp_") for k in keys]
    if h_res is None:
        if num_layers is None:
            raise ValueError("num_layers is needed when there is no H_res")
        out: Dict[str, object] = {k: [1.0] * num_layers for k in names}
        out.update(comp_fwd_peak=1.0, comp_bwd_peak=1.0)
        return out
    prof: Dict[str, List[float]] = {k: [] for k in names}
    for prefix, mats in (("", [h.detach().to(torch.float64) for h in h_res]),
                         ("comp_", composite_to_output(h_res))):
        for m in mats:
            for name, g in zip(("fwd", "bwd"), amax_gain(m)):
                per_seq = _per_sequence_mean(g)
                prof[f"{prefix}{name}_max"].append(float(per_seq.max()))
                prof[f"{prefix}{name}_mean"].append(float(per_seq.mean()))
    out = dict(prof)
    out.update(comp_fwd_peak=max(prof["comp_fwd_max"]), comp_bwd_peak=max(prof["comp_bwd_max"]))
    return out


def hres_frobenius(h: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of ``||H_res||_F`` for ``(..., n, n)`` matrices (a 0-dim tensor)."""
    return torch.linalg.matrix_norm(h.detach().float()).mean()


def _grad_norm(module: nn.Module) -> torch.Tensor:
    """L2 norm of the gradients of ``module``'s parameters, as a tensor (no host sync).

    Sharded (FSDP2 DTensor) gradients are gathered first, on every rank alike."""
    sq = [(g.full_tensor() if hasattr(g, "full_tensor") else g).detach().float().pow(2).sum()
          for g in (p.grad for p in module.parameters()) if g is not None]
    return torch.stack(sq).sum().sqrt() if sq else torch.zeros(())


def step_stats(connections: Sequence[nn.Module]) -> Dict[str, torch.Tensor]:
    """Per-step metrics from the gradients now held and the mappings last recorded.

    ``grad_ratio_last_first``: gradient norm of the last connection's parameters over the
    first's (before clipping; inf where the first has none). ``hres_fro_mean``: the mean
    over layers of :func:`hres_frobenius`, only when some connection recorded its mappings
    (``record_mappings``). Values are tensors so that the caller reads them with its own.
    """
    conns = list(connections)
    if not conns:
        return {}
    first, last = _grad_norm(conns[0]), _grad_norm(conns[-1])
    out = {"grad_ratio_last_first": last.to(first.device) / first}
    mats = [c.last_mappings[2] for c in conns if getattr(c, "last_mappings", None) is not None]
    if mats:
        out["hres_fro_mean"] = torch.stack([hres_frobenius(h) for h in mats]).mean()
    return out
