"""Block recomputation of the residual streams (mHC paper, Sec. 4.3.2, Eq. 20).

Every mHC connection keeps its input stream ``x_l`` (``n*C`` per token) alive for backward.
Inside :func:`stream_recompute` only every ``block``-th connection output (and the stream
entering the first connection) is kept; an output ``x_{l+1}`` inside a block is dropped after
forward and recomputed in backward from what the connection keeps anyway, the branch output
``y_l`` and the mappings ``H_post,l``, ``H_res,l``:

    x_{l+1} = H_res,l x_l + H_post,l^T y_l                              (Eq. 3, post-res)

by the same post-res forward the layer ran (fused kernels or the PyTorch reference, under
``no_grad``), so the recomputed stream is bit for bit the forward's.

Mechanism: ``torch.autograd.graph.saved_tensors_hooks``. A ``HyperConnection`` running in
the context registers its output with a recipe ``(parent, y, H_post, H_res)``; the parent is
the previous recipe, or the stream itself at a block boundary (a recipe never holds a dropped
stream). The pack hook replaces any saved tensor that aliases a registered stream (same
storage: the fused path saves ``x.reshape(-1, n, C).contiguous()`` views, the reference path
``flatten`` / ``einsum`` views) by a small handle; unpacking recomputes the block's streams up
to that one once, caches them on the recipes and returns a view of the saved tensor's shape,
stride and offset. The caches die with the recipes, i.e. once backward has passed the
connections that saved them (autograd frees saved tensors as it goes).

``retain_graph=True``: the recomputed streams stay cached until the graph is freed, so a
second backward recomputes nothing, and memory after the first backward equals that of no
recomputation. Forwards under ``torch.no_grad()`` register nothing. Only the innermost
``saved_tensors_hooks`` are active, so connections inside ``torch.utils.checkpoint`` (which
installs its own) save nothing through this context. The context is eager only: code traced by
``torch.compile`` neither enters it nor registers.

Compiled models: :func:`recompute_streams` runs a stack of connections with the same block
rule in both modes. Eager, it is this context; traced by ``torch.compile``, it is one
``torch.utils.checkpoint`` region with a selective policy (:class:`StreamPolicy`): the fused
post-res ops (``torch_mhc.connection_post``, ``torch_mhc.post_res``) whose outputs fall
inside a block must be recomputed, everything else is saved as without checkpointing. The
compiled backward then reruns those post-res ops (their kernels) from the saved ``y_l``,
``H_post,l``, ``H_res,l`` and the block's first stream, which is Eq. 20's recomputation
decided at compile time. It covers mHC on the fused Triton backend (and modes registered
with ``fused_mix``); HC and the PyTorch reference run post-res as plain tensor code, which
Inductor's partitioner saves or recomputes by its own rules.
"""
from __future__ import annotations

import contextlib
import functools
import math
import threading
from typing import Callable, Optional, Union

import torch
from torch.multiprocessing.reductions import StorageWeakRef

__all__ = ["stream_recompute", "StreamRecompute", "current_recompute", "optimal_block_size",
           "resolve_block_size", "recompute_streams", "StreamPolicy"]

_STATE = threading.local()


def optimal_block_size(n: int, num_layers: int) -> int:
    """The paper's recomputation block size ``L_r*`` for ``n`` streams and ``num_layers``
    connections (mHC paper, Sec. 4.3.2, Eq. 20).

    Per token, in units of ``C`` values: the first stream of each block is kept (``n`` per
    block, ``ceil(L / L_r)`` blocks) and during the backward of the active block each of its
    ``L_r`` layers holds ``n + 2`` transient values (paper's accounting), so

        L_r* = argmin_{1 <= L_r <= L}  n * ceil(L / L_r) + (n + 2) * L_r  ~  sqrt(n L / (n + 2))

    The exact integer argmin is returned (ties go to the smaller block). Examples: ``n = 4``,
    ``L = 8`` -> 2 (costs 38, 28, 30, 32 for ``L_r`` = 1..4); ``n = 4``, ``L = 60`` -> 6.
    """
    if n < 1 or num_layers < 1:
        raise ValueError(f"need n >= 1 and num_layers >= 1, got n={n}, num_layers={num_layers}")
    return min(range(1, num_layers + 1),
               key=lambda b: (n * math.ceil(num_layers / b) + (n + 2) * b, b))


def resolve_block_size(block: Union[int, str], n: int, num_layers: int) -> int:
    """``block`` as an int: ``0`` (off) and positive sizes as given; ``"auto"`` or ``-1``:
    :func:`optimal_block_size` for ``n`` streams and ``num_layers`` connections."""
    if block == "auto" or block == -1:
        return optimal_block_size(n, num_layers)
    if isinstance(block, bool) or not isinstance(block, int) or block < 0:
        raise ValueError(f"recompute block must be an int >= 0, -1 or 'auto', got {block!r}")
    return block


class _Recipe:
    """How to rebuild one dropped stream: ``fn(parent stream, *args)`` under no_grad."""

    __slots__ = ("parent", "fn", "args", "amp", "cache")

    def __init__(self, parent, fn, args, amp):
        self.parent = parent  # a _Recipe, or a (detached) boundary stream
        self.fn, self.args, self.amp = fn, args, amp
        self.cache: Optional[torch.Tensor] = None

    def value(self) -> torch.Tensor:
        chain, r = [], self
        while isinstance(r, _Recipe) and r.cache is None:
            chain.append(r)
            r = r.parent
        x = r.cache if isinstance(r, _Recipe) else r
        for r in reversed(chain):  # block boundary first; each stream computed once
            device, dtype, enabled = r.amp
            with torch.no_grad(), torch.autocast(device, dtype=dtype, enabled=enabled):
                x = r.fn(x, *r.args)
            r.cache = x
        return self.cache


class _Entry:
    """A registered (droppable) stream: its storage, recipe and layout at registration."""

    __slots__ = ("storage", "recipe", "dtype", "shape", "stride", "version")

    def __init__(self, out: torch.Tensor, recipe: _Recipe):
        self.storage = StorageWeakRef(out.untyped_storage())
        self.recipe, self.dtype, self.shape = recipe, out.dtype, out.shape
        self.stride, self.version = out.stride(), out._version

    def is_stream(self, t: torch.Tensor) -> bool:
        """``t`` is the stream itself (same dtype, shape and layout), not just a view of it."""
        return (t.dtype == self.dtype and t.shape == self.shape and t.stride() == self.stride
                and t.storage_offset() == 0)


class _Handle:
    """What the graph holds instead of a saved view of a dropped stream."""

    __slots__ = ("entry_stride", "recipe", "size", "stride", "offset")

    def __init__(self, entry: _Entry, t: torch.Tensor):
        self.recipe, self.entry_stride = entry.recipe, entry.stride
        self.size, self.stride, self.offset = t.shape, t.stride(), t.storage_offset()


def _unpack(obj):
    if not isinstance(obj, _Handle):
        return obj
    base = obj.recipe.value()
    if base.stride() != obj.entry_stride:  # registered streams are contiguous
        base = base.contiguous()
    return base.as_strided(obj.size, obj.stride, obj.offset)


def _owns_storage(t: torch.Tensor) -> bool:
    """Contiguous from offset 0 over its whole storage: rebuildable by a contiguous result."""
    return (t.numel() > 0 and t.is_contiguous() and t.storage_offset() == 0
            and t.untyped_storage().nbytes() == t.numel() * t.element_size())


class StreamRecompute:
    """Drop the streams inside blocks of ``block`` connections; see the module doc.

    Use through :func:`stream_recompute`. ``block = 1`` keeps every stream (no effect);
    ``block = 0`` is not allowed here (callers skip the context to turn it off).
    """

    def __init__(self, block: int):
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise ValueError(f"block must be an int >= 1, got {block!r}")
        self.block = block
        self.connections = 0  # connection outputs seen with grad enabled
        self._entries: dict = {}  # storage address (cdata) -> _Entry
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)

    def __enter__(self) -> "StreamRecompute":
        self._hooks.__enter__()
        _stack().append(self)
        return self

    def __exit__(self, *exc) -> None:
        _stack().remove(self)
        self._entries.clear()  # the handles in the graph keep their recipes
        self._hooks.__exit__(*exc)

    def _entry(self, t: torch.Tensor) -> Optional[_Entry]:
        key = t.untyped_storage()._cdata
        e = self._entries.get(key)
        if e is not None and e.storage.expired():  # that stream is gone
            del self._entries[key]
            return None
        return e

    def _pack(self, t: torch.Tensor):
        if not self._entries or t.layout != torch.strided:
            return t
        e = self._entry(t)
        if e is None or t.dtype != e.dtype or t._version != e.version:  # written in place
            return t
        return _Handle(e, t)

    def connection_output(self, out: torch.Tensor, streams: torch.Tensor,
                          post: Callable[..., torch.Tensor], y: torch.Tensor,
                          h_post: torch.Tensor, h_res: torch.Tensor) -> None:
        """Called by a connection whose output ``out = post(streams, y, h_post, h_res)``:
        registers ``out`` for recomputation unless it closes a block (then it is kept)."""
        if not (torch.is_grad_enabled() and out.requires_grad):
            return
        self.connections += 1
        if self.connections % self.block == 0 or not _owns_storage(out):
            return
        e = self._entry(streams)
        if e is not None and e.is_stream(streams) and streams._version == e.version:
            parent = e.recipe
        else:  # a kept stream (block boundary, model input): saved by the graph anyway
            parent = streams.detach()
        dev = out.device.type
        amp = (dev, torch.get_autocast_dtype(dev), torch.is_autocast_enabled(dev))
        recipe = _Recipe(parent, post, (y.detach(), h_post.detach(), h_res.detach()), amp)
        self._entries[out.untyped_storage()._cdata] = _Entry(out, recipe)


def _stack() -> list:
    if not hasattr(_STATE, "stack"):
        _STATE.stack = []
    return _STATE.stack


def current_recompute() -> Optional[StreamRecompute]:
    """The innermost active :class:`StreamRecompute` of this thread, or None (always None
    while ``torch.compile`` traces: recomputation is eager only)."""
    if torch.compiler.is_compiling():
        return None
    stack = _stack()
    return stack[-1] if stack else None


def stream_recompute(block: int):
    """Context manager: connections run inside it keep only every ``block``-th output stream
    for backward and recompute the others (one post-res forward each) during backward.

    ``with stream_recompute(4): loss = model(x)`` then ``loss.backward()`` anywhere.
    Gradients are unchanged (bit for bit the streams of the forward). ``block = 0`` turns it
    off (a null context), as does tracing by ``torch.compile`` (eager only); see
    :func:`resolve_block_size` for ``"auto"``."""
    if block == 0 or torch.compiler.is_compiling():
        return contextlib.nullcontext()
    return StreamRecompute(block)


class StreamPolicy:
    """Selective-checkpoint policy (``torch.utils.checkpoint.create_selective_checkpoint_contexts``)
    of :func:`recompute_streams` under ``torch.compile``: counts the fused post-res calls of
    one forward in order (and, apart, those of a recomputation) and marks the output of each
    one that does not close a block of ``block`` connections as must-recompute; every other
    op is saved (prefer-save), as without checkpointing. A fresh policy per traced forward."""

    def __init__(self, block: int):
        from torch.utils.checkpoint import CheckpointPolicy

        from ..ops import connection, post_res  # noqa: F401  (registers the ops)
        self.block, self._policy = block, CheckpointPolicy
        self._seen = [0, 0]  # post-res calls of the forward, of a recomputation
        self._posts = {torch.ops.torch_mhc.connection_post.default,
                       torch.ops.torch_mhc.post_res.default}

    def __call__(self, ctx, func, *args, **kwargs):
        if func not in self._posts:
            return self._policy.PREFER_SAVE
        self._seen[ctx.is_recompute] += 1
        if self._seen[ctx.is_recompute] % self.block == 0:  # closes a block: kept
            return self._policy.PREFER_SAVE
        return self._policy.MUST_RECOMPUTE


def _policy_contexts(block: int):
    from torch.utils.checkpoint import create_selective_checkpoint_contexts
    return create_selective_checkpoint_contexts(StreamPolicy(block))


def recompute_streams(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                      block: int) -> torch.Tensor:
    """``fn(x)``, a stack of connections from streams ``x``, keeping only every ``block``-th
    connection output for backward (``block = 0``: all of them).

    Eager: :func:`stream_recompute` around ``fn``. Traced by ``torch.compile``: one
    non-reentrant ``torch.utils.checkpoint`` region around ``fn`` with :class:`StreamPolicy`,
    so the compiled backward recomputes the dropped streams with the fused post-res kernels
    (module doc). Gradients are the same either way.
    """
    if not torch.compiler.is_compiling():
        with stream_recompute(block):  # (block 0: a null context)
            return fn(x)
    if block <= 1:
        return fn(x)
    from torch.utils.checkpoint import checkpoint
    return checkpoint(fn, x, use_reentrant=False,
                      context_fn=functools.partial(_policy_contexts, block))
