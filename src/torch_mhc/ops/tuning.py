"""Launch configurations of the fused kernels: one table, read by every launcher.

``LAUNCH_DEFAULTS[key]`` is one configuration (a dict), or a list of rules
``(condition, configuration)`` tried in order: the first whose condition holds is used, and
the last rule's condition is ``{}`` (always true). A condition is a dict over the launch
shape a launcher passes to :func:`launch_config`:

* ``"<name>_max": v`` holds when ``shape[name] <= v``;
* ``"<name>": v`` holds when ``shape[name] == v``.

Shape names: ``T`` tokens, ``n`` streams, ``C`` channels per stream, ``dtype_bytes`` of the
streams' dtype, and ``row = next_pow2(n) * next_pow2(C)`` (a token's streams as the
elementwise kernels tile them).

Configuration keys:

* ``BT``, ``BC``, ``BK``: tiles over tokens, channels (per stream) and the GEMM reduction;
* ``BC_x_NB``: instead of ``BC``, the channel tile over all streams padded to a power of two:
  ``BC = max(16, BC_x_NB // next_pow2(n))``;
* ``num_warps``, ``num_stages``: Triton's launch options;
* ``waves``: programs per multiprocessor the split-K / split-T grids aim for;
* ``tiles_per_program``: token tiles one program of a dx pass loops over;
* ``pipeline_stages``: software-pipeline stages of that token loop (``tl.range``; in the
  coefficient token kernels, of the pre-mix's channel loop, 1 where unset): 2 or more
  prefetch the next tiles with cp.async while the current one is computed;
* ``pre_mix`` (``coef_token``, ``coef_token_bwd``): the coefficient token kernel also does
  the fused connection's pre-mix, ``h = H_pre x`` forward and ``<dh, x_i>`` backward,
  reading ``x`` in channel tiles of ``BC`` (one launch fewer), instead of the pre-mix
  kernels;
* ``phase_split`` (``coef_token``, ``coef_token_bwd``, with ``pre_mix``): odd programs run
  the Sinkhorn (forward or backward) before their pass over ``x`` instead of after it, so
  that while some programs stream ``x`` others compute (all of them are resident at once:
  the kernels are latency-bound, NOTES 2026-12-07). Off where unset; on in the ``C_max:
  1024`` rows, where the token kernels do the pre-mix.

The defaults are the fastest configurations ``benchmarks/sweep.py`` found at T = C = 4096,
n = 4, bf16 (H100, H200); the ``C_max: 1024`` rows are the fastest at gpt-small's shape,
T = 8192, C = 1024 (H200, commit 059fdc3, ``sweep_h200_2026-12-02_059fdc3_c1024.json``;
the token kernels' ``pipeline_stages`` and the dx pass's ``tiles_per_program`` from
``connection-kernels_h200_2026-12-07_1bde13c_c1024-variants.json`` and its H100 twin:
pre-mix forward 84 -> 29 us, post-res forward 59 -> 42 us, GEMM 69 -> 44 us, dx pass
256 -> 190 us); other shapes use the same kernels with the rules below.
``TORCH_MHC_TUNING`` (a JSON object ``{key: {option: value}}``, or a path to one) overrides
any of them, as the sweep does to time alternatives.

Launchers read a configuration through :func:`launch_plan`, which also caches what they derive
from it (grid, constexpr arguments) per shape, so a launch repeats none of this work.
"""
from __future__ import annotations

import json
import os
import warnings

import torch

from ._backend import interpret_mode, is_broadcast
from ._launch import next_pow2

__all__ = ["LAUNCH_DEFAULTS", "TUNING", "launch_config", "launch_plan", "stream_shape"]

LAUNCH_DEFAULTS: dict = {
    # forward: split-K projection GEMM + sum x^2, then the per-token mappings and Sinkhorn
    "coef_gemm": [({"dtype_bytes": 2, "n_max": 4, "C_max": 1024},
                   dict(BT=64, BK=128, num_warps=4, num_stages=3, waves=2)),
                  ({"dtype_bytes": 2, "n_max": 4},
                   dict(BT=128, BK=128, num_warps=8, num_stages=3, waves=4)),
                  ({"n_max": 4}, dict(BT=64, BK=32, num_warps=4, num_stages=3, waves=2)),
                  ({}, dict(BT=32, BK=32, num_warps=4, num_stages=3, waves=2))],
    # (``pre_mix``: the token kernels also do the connection's pre-mix, h = H_pre x forward
    # and <dh, x_i> backward, reading x in channel tiles of BC, instead of the pre-mix
    # kernels; sweep_h200_2026-12-02_239e078_token-premix_c*.json)
    # (``phase_split``: token forward 35 -> 31 us, backward 43 -> 33 us at T = 8192, C = 1024,
    # H100, connection-kernels_h100_2026-12-07_f5e5c99_phase-split.json)
    "coef_token": [({"n_max": 4, "C_max": 1024},  # one launch fewer for +1 us (62.9 vs 61.9)
                    dict(BT=4, BC=64, pre_mix=True, num_warps=1, pipeline_stages=3,
                         phase_split=True)),
                   ({"n_max": 4}, dict(BT=8, BC=64, pre_mix=False, num_warps=1)),
                   ({}, dict(BT=8, BC=64, pre_mix=False, num_warps=2))],
    # backward: per-token gradients of the mappings, then the pass over x
    "coef_token_bwd": [({"n_max": 4, "C_max": 1024},  # token + dx pass 161 vs 312 us
                        dict(BT=8, BC=64, pre_mix=True, num_warps=1, pipeline_stages=3,
                             phase_split=True)),
                       ({"n_max": 4}, dict(BT=4, BC=128, pre_mix=False, num_warps=1)),
                       ({}, dict(BT=4, BC=128, pre_mix=False, num_warps=2))],
    # bf16 streams, n <= 4: dx and dfn in one pass, one 2D tile per stream
    "coef_dx4": [({"C_max": 1024},  # 93.1 vs 96.2 us (8 tiles), and half the dfn partials
                  dict(BT=32, BC=64, num_warps=4, num_stages=2, tiles_per_program=16,
                       pipeline_stages=2)),
                 ({}, dict(BT=32, BC=64, num_warps=4, num_stages=2, tiles_per_program=32,
                           pipeline_stages=2))],
    # the general pass (float32 / float16 streams, n > 4): dx, then dfn as its own GEMM
    "coef_dx": [({"dtype_bytes": 2, "n_max": 4},
                 dict(BT=64, BC_x_NB=128, num_warps=4, num_stages=2, tiles_per_program=16,
                      pipeline_stages=3)),
                ({"n_max": 4}, dict(BT=32, BC_x_NB=128, num_warps=4, num_stages=2,
                                    tiles_per_program=16, pipeline_stages=2)),
                ({}, dict(BT=32, BC_x_NB=128, num_warps=4, num_stages=2, tiles_per_program=16,
                          pipeline_stages=1))],
    "coef_dfn": dict(BT=64, BK=32, num_warps=2, num_stages=4, waves=1),
    # elementwise passes: one token per program, the whole (or a wide slice of the) row
    "pre_mix_fwd": [({"C_max": 1024, "n_max": 4}, dict(BT=8, BC=256, num_warps=4)),
                    ({"row_max": 2048}, dict(BT=1, BC_x_NB=8192, num_warps=4)),
                    ({}, dict(BT=1, BC_x_NB=8192, num_warps=8))],
    "pre_mix_bwd": [({"C_max": 1024, "n_max": 4}, dict(BT=2, BC=256, num_warps=4)),
                    ({"row_max": 1024}, dict(BT=1, BC_x_NB=8192, num_warps=4)),
                    ({}, dict(BT=1, BC_x_NB=8192, num_warps=8))],
    "post_res_fwd": [({"C_max": 1024, "n_max": 4}, dict(BT=2, BC=1024, num_warps=8)),
                     ({"row_max": 2048}, dict(BT=1, BC_x_NB=16384, num_warps=4)),
                     ({}, dict(BT=1, BC_x_NB=16384, num_warps=8))],
    "post_res_bwd": dict(BT=1, BC_x_NB=4096, num_warps=4),
    # the backward's partial sums (dfn over token ranges, dscale / dbase over programs): BC
    # dfn values per program, BT of its partials a step
    "grad_sums": dict(BT=16, BC=256, num_warps=4),
    # the model's boundaries: one token per program row, a channel slice of every stream
    "broadcast_streams": dict(BC=1024, num_warps=4),
    "sum_streams": dict(BC=1024, num_warps=4),
}

#: Overrides ``{key: {option: value}}`` applied on top of :data:`LAUNCH_DEFAULTS`, read from
#: ``TORCH_MHC_TUNING`` at import (``benchmarks/sweep.py`` sets entries to time alternatives;
#: set whole entries, as it does: a dict changed in place is not seen again).
TUNING: dict = {}


def _load_tuning_env() -> None:
    raw = os.environ.get("TORCH_MHC_TUNING")
    if not raw:
        return
    try:
        if os.path.exists(raw):
            with open(raw) as f:
                raw = f.read()
        TUNING.update(json.loads(raw))
    except (OSError, ValueError) as e:  # pragma: no cover - a user's typo
        warnings.warn(f"ignoring TORCH_MHC_TUNING: {e}")


_load_tuning_env()


def stream_shape(x: torch.Tensor) -> dict:
    """The launch shape of streams ``x (..., n, C)``: ``T`` (tokens: the leading dimensions
    together), ``n``, ``C``, ``dtype_bytes``, and for :func:`launch_plan` the ``dtype``,
    whether ``x`` is a broadcast view (``broadcast``), whether the Triton interpreter is on
    (``interpret``) and the CUDA ``device`` index (-1 off CUDA)."""
    n, C = x.shape[-2:]
    return dict(T=x.numel() // max(n * C, 1), n=n, C=C, dtype_bytes=x.element_size(),
                dtype=x.dtype, broadcast=is_broadcast(x), interpret=interpret_mode(),
                device=x.get_device())


def _holds(condition: dict, shape: dict) -> bool:
    for name, value in condition.items():
        if name.endswith("_max"):
            if not shape[name[:-4]] <= value:
                return False
        elif shape[name] != value:
            return False
    return True


def launch_config(key: str, **shape) -> dict:
    """The configuration of kernel ``key`` at this launch shape: the first rule of
    :data:`LAUNCH_DEFAULTS` whose condition holds, updated with ``TUNING[key]``, and ``BC``
    derived from ``BC_x_NB`` where the configuration gives that instead.

    Resolved once per table entry, override and shape (:func:`launch_plan`): the result is
    shared, read it without changing it; replace entries of the two tables rather than
    changing them in place."""
    return launch_plan(key, _as_is, **shape)


def _as_is(cfg: dict, **_) -> dict:
    return cfg


def launch_plan(key: str, derive, **shape):
    """``derive(launch_config(key, **shape), **shape)``, computed once per table entry,
    override and shape and then cached: a launcher's grid and constexpr arguments, rather
    than on every launch (host time that eager small models pay per kernel).

    ``shape`` must hold everything ``derive`` reads besides the configuration (the stream
    shape, layout flags, interpreter mode, device)."""
    entry, over = LAUNCH_DEFAULTS[key], TUNING.get(key)
    cache_key = (key, derive, id(entry), id(over), *shape.keys(), *shape.values())
    try:
        hit = _RESOLVED.get(cache_key)
    except TypeError:  # a symbolic size (torch.compile with dynamic shapes): not cached
        return derive(_resolve(entry, over or {}, dict(shape)), **shape)
    if hit is None:
        if len(_RESOLVED) > 4096:
            _RESOLVED.clear()
        # the cached value holds ``entry`` and ``over``: their ids stay theirs while cached
        hit = _RESOLVED[cache_key] = (derive(_resolve(entry, over or {}, dict(shape)), **shape),
                                      entry, over)
    return hit[0]


_RESOLVED: dict = {}


#: the options a configuration may hold (see the module docstring)
OPTIONS = frozenset({"BT", "BC", "BK", "BC_x_NB", "num_warps", "num_stages", "waves",
                     "tiles_per_program", "pipeline_stages", "pre_mix", "phase_split"})


def _resolve(entry, over: dict, shape: dict) -> dict:
    unknown = sorted(set(over) - OPTIONS)
    if unknown:  # e.g. an old tuning file's ``loop`` / ``ls`` (now ``tiles_per_program``, ...)
        raise ValueError(f"TORCH_MHC_TUNING: unknown launch option(s) {unknown}; the options "
                         f"are {sorted(OPTIONS)}")
    if "n" in shape and "C" in shape:
        shape.setdefault("row", next_pow2(shape["n"]) * next_pow2(shape["C"]))
    rules = entry if isinstance(entry, list) else [({}, entry)]
    cfg = dict(next(c for cond, c in rules if _holds(cond, shape)))
    for given, other in (("BC", "BC_x_NB"), ("BC_x_NB", "BC")):
        if given in over:
            cfg.pop(other, None)
    cfg.update(over)
    if "BC_x_NB" in cfg:
        cfg["BC"] = max(16, cfg.pop("BC_x_NB") // next_pow2(shape["n"]))
    return cfg
