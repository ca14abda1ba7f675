"""Triton device functions shared by the fused kernels: the bf16 split of float32 operands
and the index/mask preambles of token tiles.

Plain functions, like the kernels: a kernel's ``LazyJit(..., helpers=(...))`` decorates them
per mode and binds them in the kernel's module (``_launch.LazyJit``).
"""
from __future__ import annotations


def _split_hi_lo(v, PREC: tl.constexpr):
    """A float32 tile as two bf16 tiles ``hi + lo`` (held in float32 by the interpreter,
    ``PREC == 3``, which cannot multiply bf16 matrices)."""
    hi = v.to(tl.bfloat16)
    lo = (v - hi.to(tl.float32)).to(tl.bfloat16)
    if PREC == 3:
        hi = hi.to(tl.float32)
        lo = lo.to(tl.float32)
    return hi, lo


def _bf16_hi(v, PREC: tl.constexpr):
    """The ``hi`` part of :func:`_split_hi_lo` alone: ``v`` rounded to bf16."""
    hi = v.to(tl.bfloat16)
    if PREC == 3:
        hi = hi.to(tl.float32)
    return hi


def _slice(pid, B: tl.constexpr, L):
    """Indices ``pid * B + [0, B)`` of a tile along a dimension of length ``L``, and their
    mask."""
    idx = pid * B + tl.arange(0, B)
    return idx, idx < L


def _token_tile(pid, T, n: tl.constexpr, NB: tl.constexpr, BT: tl.constexpr):
    """Indices and masks of the per-token kernels' tile of ``BT`` tokens: ``rows``,
    ``rmask``, ``r64``, stream index ``ii`` with its 2D mask ``m2`` [BT, NB], and the
    ``[1, NB, NB]`` indices ``aa`` (comb row, V4 layout: H_res = comb^T), ``bb`` (comb
    column) with ``valid`` and the 3D mask ``m3``."""
    rows = pid * BT + tl.arange(0, BT)
    rmask = rows < T
    ii = tl.arange(0, NB)
    m2 = rmask[:, None] & (ii < n)[None, :]
    aa = tl.arange(0, NB)[None, :, None]
    bb = tl.arange(0, NB)[None, None, :]
    valid = (aa < n) & (bb < n)
    m3 = rmask[:, None, None] & valid
    return rows, rmask, rows.to(tl.int64), ii, m2, aa, bb, valid, m3


def _gates(scale_ptr, base_ptr, ii, aa, bb, valid, n: tl.constexpr):
    """The gates ``a_pre, a_post, a_res`` and biases ``b_pre [NB], b_post [NB],
    b_res [1, NB, NB]`` (comb layout) in float32."""
    a_pre = tl.load(scale_ptr).to(tl.float32)
    a_post = tl.load(scale_ptr + 1).to(tl.float32)
    a_res = tl.load(scale_ptr + 2).to(tl.float32)
    b_pre = tl.load(base_ptr + ii, mask=ii < n, other=0.0).to(tl.float32)
    b_post = tl.load(base_ptr + n + ii, mask=ii < n, other=0.0).to(tl.float32)
    b_res = tl.load(base_ptr + 2 * n + aa * n + bb, mask=valid, other=0.0).to(tl.float32)
    return a_pre, a_post, a_res, b_pre, b_post, b_res


def _row_tile(pid_t, pid_c, T, C, n: tl.constexpr, NB: tl.constexpr, BT: tl.constexpr,
              BC: tl.constexpr):
    """Indices and masks of a (token tile, channel tile) of the elementwise kernels:
    ``rows``, ``rmask``, ``r64``, streams ``ii``, channels ``cc``, the [BT, NB] mask ``m2``
    and the [BT, BC] mask ``mc``."""
    rows = pid_t * BT + tl.arange(0, BT)
    rmask = rows < T
    ii = tl.arange(0, NB)
    cc = pid_c * BC + tl.arange(0, BC)
    m2 = rmask[:, None] & (ii < n)[None, :]
    mc = rmask[:, None] & (cc < C)[None, :]
    return rows, rmask, rows.to(tl.int64), ii, cc, m2, mc


def _stream(tile, ii, j):
    """Stream ``j`` of a [BT, NB, BC] tile as a float32 [BT, BC] tile (``ii``: the stream
    indices; a select within each thread's values when the tile keeps its NB streams
    together)."""
    return tl.sum(tl.where((ii == j)[None, :, None], tile.to(tl.float32), 0.0), axis=1)
