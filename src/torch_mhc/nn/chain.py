"""Chained connections: each mHC connection computes the next one's projection.

A connection's coefficients start with a GEMM over its input streams (``x fn^T`` and
``sum x^2``, Eq. 10-14): ``nC`` values read per token. When connection ``l``'s output feeds
connection ``l + 1`` directly, the fused post-res kernel of ``l`` already holds those
streams in registers as it writes them; given ``fn`` of ``l + 1`` it also computes that
GEMM's partial sums (``ops.post_res.post_res_project_triton``), and ``l + 1`` skips its own.
That saves ``n C`` of the ``18 C`` values per token that a connection's forward moves
(n = 4). The backward is unchanged: ``l + 1``'s pre half differentiates its projection as
if it had computed it.

Which connection follows which is a property of the model, not of the layer, so it is
declared around the forward::

    with chain_connections(model.connections()):
        logits, loss = model(idx, targets)

``GPT`` and ``DeepStack`` do this themselves. Inside the context, connection ``l`` hands
its output and the partials to ``l + 1``; ``l + 1`` uses them only if it is called with
that very tensor (``is``), so anything in between that replaces the streams (a
user's ``x = x * 2``, a hook) just falls back to the GEMM. Chaining applies to fused mHC
connections (Triton backend, n <= 4) whose successor is one too, with the same ``n`` and
``dim``, and whose successor's ``fn`` is a plain tensor on the same device (under FSDP2 a
successor in another, still sharded, unit is skipped). Nothing persists after the context.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterable, Optional

import torch

__all__ = ["chain_connections", "ConnectionChain", "current_chain"]

_STATE = threading.local()


class ConnectionChain:
    """Successor table and pending hand-offs of one :func:`chain_connections` context."""

    def __init__(self, connections: Iterable):
        hcs = list(connections)
        self._next = {id(a): b for a, b in zip(hcs, hcs[1:])}
        self._pending: dict = {}  # id(successor) -> (streams it should receive, partials)
        self.handed = 0  # hand-offs taken up (tests and diagnostics)

    def __enter__(self) -> "ConnectionChain":
        _stack().append(self)
        return self

    def __exit__(self, *exc) -> None:
        _stack().remove(self)
        self._pending.clear()

    def successor(self, hc, streams: torch.Tensor):
        """The connection after ``hc`` if it can take ``hc``'s projection hand-off, else None."""
        nxt = self._next.get(id(hc))
        if nxt is None or getattr(nxt, "mode", None) != "mhc" or nxt.n != hc.n or hc.n > 4 \
                or nxt.dim != hc.dim:
            return None
        fn = nxt.fn
        if type(fn) not in (torch.Tensor, torch.nn.Parameter) or fn.device != streams.device:
            return None  # e.g. a DTensor shard (FSDP2 unit not gathered yet)
        from ..ops._backend import resolve_backend
        return nxt if resolve_backend(nxt.backend, streams) == "triton" else None

    def hand_over(self, nxt, streams: torch.Tensor, part: torch.Tensor) -> None:
        """Leave ``part`` (the projection of ``streams`` with ``nxt.fn``) for ``nxt``."""
        self._pending[id(nxt)] = (streams, part)

    def take(self, hc, streams: torch.Tensor) -> Optional[torch.Tensor]:
        """The partials left for ``hc`` if it is called on the streams they were made from."""
        entry = self._pending.pop(id(hc), None)
        if entry is None or entry[0] is not streams:
            return None
        self.handed += 1
        return entry[1]


def _stack() -> list:
    if not hasattr(_STATE, "stack"):
        _STATE.stack = []
    return _STATE.stack


def current_chain() -> Optional[ConnectionChain]:
    """The innermost active :class:`ConnectionChain` of this thread, or None (always None
    while ``torch.compile`` traces: the hand-off is eager Python state)."""
    if torch.compiler.is_compiling():
        return None
    stack = _stack()
    return stack[-1] if stack else None


def chain_connections(connections: Iterable, enabled: bool = True):
    """Context manager: inside it, each connection of ``connections`` (in call order)
    computes the next one's coefficient projection (module doc); ``as`` gives the
    :class:`ConnectionChain`. Results are those without it up to float32 summation order in
    the projection. A null context when ``enabled`` is false or under ``torch.compile``."""
    if not enabled or torch.compiler.is_compiling():
        return contextlib.nullcontext()
    return ConnectionChain(connections)
