"""Widening the residual stream to ``n`` copies and collapsing it back."""
from __future__ import annotations

import torch

from ..ops.streams import broadcast_streams, sum_streams

__all__ = ["expand_streams", "reduce_streams"]


def expand_streams(x: torch.Tensor, n: int, view: bool = False) -> torch.Tensor:
    """``(..., C) -> (..., n, C)``: ``n`` identical copies (as DeepSeek-V4 feeds its embedding).

    Returns a contiguous tensor, so the streams can be written in place. ``view=True``
    returns the broadcast view instead (``x.unsqueeze(-2).expand(...)``, no copy, read-only):
    the fused mHC connection reads it in place, so the first connection reads its input once
    per token instead of ``n`` times and the copy is never written (the models use it).
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if x.dim() < 1:
        raise ValueError("expand_streams expects a tensor of shape (..., C)")
    return broadcast_streams(x, n, view=view)


def reduce_streams(streams: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """``(..., n, C) -> (..., C)`` by the mean (default) or the sum over the streams.

    The mean is the default because it makes ``reduce_streams(expand_streams(x, n))``
    equal ``x`` (to rounding) and so keeps an mHC network at initialisation equal to its residual twin (every stream
    equals the residual hidden state; see ``HyperConnection``). The sum scales the output
    by ``n``, which the final norm of a transformer hides but a plain stack does not.
    """
    if streams.dim() < 2:
        raise ValueError(f"reduce_streams expects (..., n, C), got shape {tuple(streams.shape)}")
    if reduction == "mean":
        return sum_streams(streams, 1.0 / streams.shape[-2])
    if reduction == "sum":
        return sum_streams(streams)
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
