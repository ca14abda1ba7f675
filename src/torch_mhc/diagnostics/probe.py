"""One diagnostic pass on a fixed probe batch: mappings, gains and gradient norms per layer.

``probe_diagnostics(model, x, y)`` runs one forward and backward of ``model`` (any model
with ``forward(idx, targets) -> (logits, loss)`` and ``connections()``, e.g. ``GPT`` and
``DeepStack``), with every ``HyperConnection`` recording its mappings, and returns a
JSON-ready dict. It does not touch the optimizer, leaves any existing ``.grad`` as it was
and uses no random numbers, so turning diagnostics on does not change training.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from .gain import gain_profile
from .paper import hres_frobenius, paper_gains
from .gradients import StreamGradRecorder, depth_ratio, param_grad_norms
from .stats import hres_stats, mean_matrix, range_stats

__all__ = ["probe_diagnostics", "collect_mappings"]


def _per_layer(stats: List[Dict[str, float]]) -> Dict[str, List[float]]:
    return {k: [s[k] for s in stats] for k in stats[0]} if stats else {}


def collect_mappings(connections) -> Optional[Dict[str, object]]:
    """Gains and statistics from the ``last_mappings`` each connection recorded.

    Returns None when no connection recorded mappings (the plain residual). Layers without
    mappings among ones with them count as the identity.
    """
    maps = [c.last_mappings for c in connections]
    ref = next((m for m in maps if m is not None), None)
    if ref is None:
        return None
    n, lead = ref[2].shape[-1], ref[2].shape[:-2]
    eye = torch.eye(n, dtype=torch.float32, device=ref[2].device).expand(*lead, n, n)
    h_res = [m[2] if m is not None else eye for m in maps]
    return {
        "gain": gain_profile(h_res),
        "paper_gain": paper_gains(h_res),
        "hres_fro": [float(hres_frobenius(h)) for h in h_res],
        "hres": _per_layer([hres_stats(h) for h in h_res]),
        "hres_mean": [mean_matrix(h) for h in h_res],
        "pre": _per_layer([range_stats(m[0]) for m in maps if m is not None]),
        "post": _per_layer([range_stats(m[1]) for m in maps if m is not None]),
    }


def probe_diagnostics(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      autocast: Callable[[], contextlib.AbstractContextManager] =
                      contextlib.nullcontext, connections=None) -> Dict[str, object]:
    """Diagnostics of ``model`` on the batch ``(x, y)`` (see the module docstring).

    Keys: ``loss``; ``gain`` (per-layer single and composite Amax gains, max and mean over
    tokens; all 1.0 for the plain residual); ``paper_gain`` (the same in the paper's
    convention, :func:`~torch_mhc.diagnostics.paper.paper_gains`); ``hres_fro`` (per-layer
    mean ``||H_res||_F``); ``hres`` (per-layer ``H_res`` statistics),
    ``hres_mean`` (token-averaged ``H_res`` per layer), ``pre``/``post`` (ranges), all None
    for the plain residual; ``grad_param``/``grad_stream`` (per-layer gradient norms) and
    their deepest/shallowest ratios ``grad_param_ratio``/``grad_stream_ratio``.
    """
    conns = list(connections if connections is not None else model.connections())
    params = [p for p in model.parameters() if p.requires_grad]
    saved_grads = [p.grad for p in params]
    saved_flags = [c.record_mappings for c in conns]
    for p in params:
        p.grad = None
    for c in conns:
        c.record_mappings, c.last_mappings = True, None
    try:
        with StreamGradRecorder(conns) as rec:
            with autocast():
                _, loss = model(x, y)
            loss.backward()
        grad_param = param_grad_norms(conns)
        grad_stream = rec.norms
        mapped = collect_mappings(conns)
    finally:
        for p, g in zip(params, saved_grads):
            p.grad = g
        for c, flag in zip(conns, saved_flags):
            c.record_mappings, c.last_mappings = flag, None
    out: Dict[str, object] = {"loss": float(loss.detach())}
    if mapped is None:
        out.update(gain=gain_profile(None, len(conns)),
                   paper_gain=paper_gains(None, len(conns)), hres_fro=None, hres=None,
                   hres_mean=None, pre=None, post=None)
    else:
        out.update(mapped)
    out.update(grad_param=grad_param, grad_stream=grad_stream,
               grad_param_ratio=depth_ratio(grad_param),
               grad_stream_ratio=depth_ratio(grad_stream))
    return out
