"""Per-layer gradient norms: of each connection's parameters and of the residual stream.

``StreamGradRecorder`` hooks the input streams ``x_l`` of every connection during one
forward/backward and records ``||dL/dx_l||``; ``param_grad_norms`` reads the parameter
gradients of each connection (its branch included). The ratio of the deepest to the
shallowest layer shows vanishing (ratio >> 1: the early layers get little gradient) or
exploding (ratio << 1) gradients through depth.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

__all__ = ["StreamGradRecorder", "param_grad_norms", "depth_ratio", "find_spikes"]


class StreamGradRecorder:
    """Context manager: record ``||dL/dx_l||`` (float64, all tokens) at each connection input.

    Use around a forward and backward pass; ``norms`` then holds one value per connection,
    in depth order (None where no gradient reached the stream).
    """

    def __init__(self, connections: Sequence[nn.Module]):
        self.connections = list(connections)
        self.norms: List[Optional[float]] = [None] * len(self.connections)
        self._handles = []

    def _pre_hook(self, index: int):
        def hook(module, args):
            x = args[0] if args else None
            if isinstance(x, torch.Tensor) and x.requires_grad:
                def grad_hook(g, i=index):
                    self.norms[i] = float(g.detach().to(torch.float64).norm())
                x.register_hook(grad_hook)
        return hook

    def __enter__(self) -> "StreamGradRecorder":
        self._handles = [c.register_forward_pre_hook(self._pre_hook(i))
                         for i, c in enumerate(self.connections)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def _full(g: torch.Tensor) -> torch.Tensor:
    """A sharded (FSDP2 DTensor) gradient gathered in full; other tensors as they are."""
    return g.full_tensor() if hasattr(g, "full_tensor") else g


def param_grad_norms(connections: Sequence[nn.Module]) -> List[float]:
    """L2 norm of the gradients of each connection's parameters (0.0 where there are none).

    Sharded gradients are gathered first (collective under FSDP2: every rank calls this)."""
    out = []
    for c in connections:
        sq = sum(float(_full(p.grad.detach()).to(torch.float64).pow(2).sum())
                 for p in c.parameters() if p.grad is not None)
        out.append(math.sqrt(sq))
    return out


def depth_ratio(norms: Sequence[Optional[float]]) -> Optional[float]:
    """``norms[-1] / norms[0]`` (deepest over shallowest), None if undefined."""
    if not norms or norms[0] in (None, 0.0) or norms[-1] is None:
        return None
    return float(norms[-1]) / float(norms[0])


def find_spikes(values: Sequence[Optional[float]], window: int = 20,
                factor: float = 4.0) -> List[int]:
    """Indices where a value exceeds ``factor`` times the median of the ``window`` before it.

    Used on the gradient norm per step (the paper's Fig. 2 shows HC's loss surge matched by
    a gradient-norm spike). Non-finite or missing values count as spikes.
    """
    out, hist = [], []
    for i, v in enumerate(values):
        if v is None or not math.isfinite(v):
            out.append(i)
            continue
        if len(hist) >= min(window, 5):
            recent = sorted(hist[-window:])
            med = recent[len(recent) // 2]
            if med > 0 and v > factor * med:
                out.append(i)
        hist.append(v)
    return out
