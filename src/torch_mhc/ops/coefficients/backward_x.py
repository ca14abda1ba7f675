"""The coefficient backward's pass over x: ``dx = G fn + 2 x d(sum x^2)`` (plus the pre-mix
and post-res terms when called from the fused connection) and ``dfn = G^T x``.

Each program takes a channel slice of every stream and loops over a token range (the loop
software-pipelined with ``tl.range`` stages, so the next tiles arrive by cp.async while one
is computed), its fn tile split hi / lo once:

* bf16 streams with n <= 4 (the default): ``_coef_dx4_kernel``, each stream's tile a 2D
  tensor of its own, dfn accumulated in the same pass (reads broadcast x and g in place);
* otherwise (float32 / float16 streams, n > 4): ``_coef_bwd_x_kernel`` with 3D [BT, NB, BC]
  tiles for dx, then ``_coef_dfn_kernel``, a skinny GEMM that reads x again.
"""
from __future__ import annotations

import torch

from .._backend import interpret_mode, is_broadcast
from .._launch import LazyJit, Launch, device_sms, dot_mode, next_pow2, triton_cdiv
from .._tiles import _bf16_hi, _slice, _split_hi_lo
from ..tuning import launch_config, launch_plan, stream_shape


def _dx4_stream(tile, Wh, acc, i: tl.constexpr, n: tl.constexpr, PREC: tl.constexpr,
                HAS_PRE: tl.constexpr, HAS_RES: tl.constexpr, X_BROADCAST: tl.constexpr):
    """Stream ``i`` of one token tile of ``_coef_dx4_kernel`` (``tile``: what every stream
    of it shares): writes its dx tile and returns its dfn accumulator ``acc`` updated
    (``X_BROADCAST``: ``xb`` is the x tile itself, loaded once for every stream)."""
    xb, dxb, hpre_ptr, hres_ptr, x_off, m2, r64, rmask, dss2, dhv, g0, g1, g2, g3, Gh, GhT, GlT, \
        C = tile
    if X_BROADCAST:
        x = xb
    else:
        x = tl.load(xb + x_off + i * C, mask=m2, other=0.0)
    if PREC == 3:
        xd = x.to(tl.float32)
    else:
        xd = x
    d = tl.dot(Gh, Wh)
    d += dss2[:, None] * x.to(tl.float32)
    if HAS_PRE:
        d += tl.load(hpre_ptr + r64 * n + i, mask=rmask, other=0.0)[:, None] * dhv.to(tl.float32)
    if HAS_RES:  # sum_j H_res[t, j, i] g_j
        d += tl.load(hres_ptr + r64 * (n * n) + 0 * n + i, mask=rmask,
                     other=0.0)[:, None] * g0.to(tl.float32)
        if n > 1:
            d += tl.load(hres_ptr + r64 * (n * n) + 1 * n + i, mask=rmask,
                         other=0.0)[:, None] * g1.to(tl.float32)
        if n > 2:
            d += tl.load(hres_ptr + r64 * (n * n) + 2 * n + i, mask=rmask,
                         other=0.0)[:, None] * g2.to(tl.float32)
        if n > 3:
            d += tl.load(hres_ptr + r64 * (n * n) + 3 * n + i, mask=rmask,
                         other=0.0)[:, None] * g3.to(tl.float32)
    tl.store(dxb + x_off + i * C, d.to(dxb.dtype.element_ty), mask=m2)
    acc = tl.dot(GhT, xd, acc)
    acc = tl.dot(GlT, xd, acc)
    return acc


def _coef_dx4_kernel(x_ptr, fn_ptr, g_ptr, dss_ptr, dx_ptr, dfn_ptr,
                     hpre_ptr, dh_ptr, hres_ptr, gout_ptr,
                     T, C, K, tiles_per, tsplit,
                     n: tl.constexpr, N: tl.constexpr, NP: tl.constexpr,
                     BT: tl.constexpr, BC: tl.constexpr, PREC: tl.constexpr,
                     HAS_PRE: tl.constexpr, HAS_RES: tl.constexpr,
                     PIPELINE_STAGES: tl.constexpr, X_BROADCAST: tl.constexpr,
                     G_BROADCAST: tl.constexpr):
    # bf16 streams, n <= 4: dx and dfn in one pass, every stream's tile a 2D [BT, BC] tensor
    # of its own (no 3D tile reshaped around ``tl.dot``; one ``_dx4_stream`` call per
    # stream, since Triton loops carry no lists of tiles), the token loop software-pipelined
    # (``PIPELINE_STAGES`` stages of cp.async prefetch):
    #   dx[t, i, c] = sum_o G[t, o] fn[o, iC + c] + 2 x[t, i, c] dss[t] + H_pre[t, i] dh[t, c]
    #                 + sum_j H_res[t, j, i] g[t, j, c]
    #   dfn[o, iC + c] (this program's token tiles) = sum_t G[t, o] x[t, i, c]
    # Program (c, s) takes token tiles s, s + tsplit, s + 2 tsplit, ...: the whole grid moves
    # up the tokens together, starting where the pre-mix backward (descending) ended, with x
    # and dh still in L2, and ending where the next post-res backward starts.
    # Products (x is exact in bf16): G fn from the bf16 high parts of G and fn alone; the
    # product's ~2^-9 relative error is that of the bf16 dx it is stored into, and it saves
    # two of five MMAs per tile (the pass is MMA-bound on an H100). G^T x = hi^T x + lo^T x,
    # with G^T loaded as such (a second, L1-resident read) rather than transposed in
    # registers (sm_90: 56 instead of 264 bytes of stack).
    pid_s = tl.program_id(1)
    cc, cmask = _slice(tl.program_id(0), BC, C)
    oo = tl.arange(0, NP)
    rl = tl.arange(0, BT)
    w_mask = (oo < N)[:, None] & cmask[None, :]
    w_off = oo[:, None] * K + cc[None, :]
    Wh0 = _bf16_hi(tl.load(fn_ptr + w_off + 0 * C, mask=w_mask & (n > 0), other=0.0), PREC)
    Wh1 = _bf16_hi(tl.load(fn_ptr + w_off + 1 * C, mask=w_mask & (n > 1), other=0.0), PREC)
    Wh2 = _bf16_hi(tl.load(fn_ptr + w_off + 2 * C, mask=w_mask & (n > 2), other=0.0), PREC)
    Wh3 = _bf16_hi(tl.load(fn_ptr + w_off + 3 * C, mask=w_mask & (n > 3), other=0.0), PREC)
    a0 = tl.zeros([NP, BC], dtype=tl.float32)
    a1 = tl.zeros([NP, BC], dtype=tl.float32)
    a2 = tl.zeros([NP, BC], dtype=tl.float32)
    a3 = tl.zeros([NP, BC], dtype=tl.float32)
    x_off = rl[:, None] * K + cc[None, :]
    for k in tl.range(0, tiles_per, num_stages=PIPELINE_STAGES):
        t0 = (k * tsplit + pid_s) * BT
        rows = t0 + rl
        rmask = rows < T
        r64 = rows.to(tl.int64)
        m2 = rmask[:, None] & cmask[None, :]
        tb = t0.to(tl.int64) * K  # this tile's first row; int32 offsets inside it
        Gh = _bf16_hi(tl.load(g_ptr + r64[:, None] * NP + oo[None, :],
                              mask=rmask[:, None] & (oo < N)[None, :], other=0.0), PREC)
        GhT, GlT = _split_hi_lo(tl.load(g_ptr + r64[None, :] * NP + oo[:, None],
                                        mask=(oo < N)[:, None] & rmask[None, :], other=0.0),
                                PREC)
        dss2 = 2.0 * tl.load(dss_ptr + rows, mask=rmask, other=0.0)
        # a term that is off keeps a placeholder, never read (``tile`` holds tensors only)
        dhv, g0, g1, g2, g3 = dss2, dss2, dss2, dss2, dss2
        if HAS_PRE:
            dhv = tl.load(dh_ptr + t0.to(tl.int64) * C + rl[:, None] * C + cc[None, :],
                          mask=m2, other=0.0)
        if HAS_RES:
            if G_BROADCAST:  # g a broadcast view (the gradient of reduce_streams): one load
                g0 = tl.load(gout_ptr + t0.to(tl.int64) * C + rl[:, None] * C + cc[None, :],
                             mask=m2, other=0.0)
                g1, g2, g3 = g0, g0, g0
            else:
                g0 = tl.load(gout_ptr + tb + x_off + 0 * C, mask=m2 & (n > 0), other=0.0)
                g1 = tl.load(gout_ptr + tb + x_off + 1 * C, mask=m2 & (n > 1), other=0.0)
                g2 = tl.load(gout_ptr + tb + x_off + 2 * C, mask=m2 & (n > 2), other=0.0)
                g3 = tl.load(gout_ptr + tb + x_off + 3 * C, mask=m2 & (n > 3), other=0.0)
        if X_BROADCAST:  # x a broadcast view: the same (T, C) tile for every stream
            xb = tl.load(x_ptr + t0.to(tl.int64) * C + rl[:, None] * C + cc[None, :],
                         mask=m2, other=0.0)
        else:
            xb = x_ptr + tb
        tile = (xb, dx_ptr + tb, hpre_ptr, hres_ptr, x_off, m2, r64, rmask, dss2, dhv,
                g0, g1, g2, g3, Gh, GhT, GlT, C)
        a0 = _dx4_stream(tile, Wh0, a0, 0, n, PREC, HAS_PRE, HAS_RES, X_BROADCAST)
        if n > 1:
            a1 = _dx4_stream(tile, Wh1, a1, 1, n, PREC, HAS_PRE, HAS_RES, X_BROADCAST)
        if n > 2:
            a2 = _dx4_stream(tile, Wh2, a2, 2, n, PREC, HAS_PRE, HAS_RES, X_BROADCAST)
        if n > 3:
            a3 = _dx4_stream(tile, Wh3, a3, 3, n, PREC, HAS_PRE, HAS_RES, X_BROADCAST)
    out = dfn_ptr + pid_s.to(tl.int64) * NP * K + w_off
    tl.store(out + 0 * C, a0, mask=w_mask & (n > 0))
    tl.store(out + 1 * C, a1, mask=w_mask & (n > 1))
    tl.store(out + 2 * C, a2, mask=w_mask & (n > 2))
    tl.store(out + 3 * C, a3, mask=w_mask & (n > 3))


def _coef_bwd_x_kernel(x_ptr, fn_ptr, g_ptr, dss_ptr, dx_ptr,
                       hpre_ptr, dh_ptr, hres_ptr, gout_ptr,
                       T, C, K, t_per_split,
                       n: tl.constexpr, N: tl.constexpr, NB: tl.constexpr, NP: tl.constexpr,
                       BT: tl.constexpr, BC: tl.constexpr, QB: tl.constexpr, PREC: tl.constexpr,
                       HAS_PRE: tl.constexpr, HAS_RES: tl.constexpr,
                       PIPELINE_STAGES: tl.constexpr):
    # The general dx pass: a channel slice [c0, c0 + BC) of every stream, over this program's
    # token range (the fn tile, split hi + lo once, stays in registers):
    #   dx[t, i, c] = sum_o G[t, o] fn[o, iC + c] + 2 x[t, i, c] dss[t]
    #                 (+ H_pre[t, i] dh[t, c])              pre-mix backward (HAS_PRE)
    #                 (+ sum_j H_res[t, j, i] g[t, j, c])   post-res backward (HAS_RES)
    # Stream tiles are 3D [BT, NB, BC] (c innermost, vector loads); the product sees them
    # flattened to [BT, NB * BC] (column i * BC + c). dfn is ``_coef_dfn_kernel``'s.
    pid_c = tl.program_id(0)
    pid_s = tl.program_id(1)
    c0 = pid_c * BC
    ii = tl.arange(0, NB)
    cc = tl.arange(0, BC)
    oo = tl.arange(0, NP)
    cmask = (c0 + cc) < C
    icmask = (ii < n)[:, None] & cmask[None, :]  # [NB, BC]
    ic_off = ii[:, None] * C + (c0 + cc)[None, :]  # column in [0, K)
    W3 = tl.load(fn_ptr + oo[:, None, None] * K + ic_off[None, :, :],
                 mask=(oo < N)[:, None, None] & icmask[None, :, :], other=0.0).to(tl.float32)
    W = tl.reshape(W3, [NP, QB])
    if PREC >= 2:
        W_hi, W_lo = _split_hi_lo(W, PREC)
    t_lo = pid_s * t_per_split
    for tt in tl.range(0, t_per_split, BT, num_stages=PIPELINE_STAGES):
        t0 = t_lo + tt
        rl = tl.arange(0, BT)
        rmask = (t0 + rl) < T
        xb = x_ptr + t0.to(tl.int64) * K  # int32 offsets inside the tile
        m3 = rmask[:, None, None] & icmask[None, :, :]
        off3 = rl[:, None, None] * K + ic_off[None, :, :]
        x3 = tl.load(xb + off3, mask=m3, other=0.0)
        Gt = tl.load(g_ptr + (t0 + rl)[:, None].to(tl.int64) * NP + oo[None, :],
                     mask=rmask[:, None] & (oo < N)[None, :], other=0.0)
        if PREC >= 2:  # G = hi + lo: hi W_hi + hi W_lo + lo W_hi
            G_hi, G_lo = _split_hi_lo(Gt, PREC)
            if PREC == 2:
                d2 = tl.dot(G_hi, W_hi)
                d2 = tl.dot(G_hi, W_lo, d2)
                d2 = tl.dot(G_lo, W_hi, d2)
            else:  # interpreter: the same split, products in float32
                d2 = tl.dot(G_hi, W_hi, input_precision="ieee")
                d2 = tl.dot(G_hi, W_lo, d2, input_precision="ieee")
                d2 = tl.dot(G_lo, W_hi, d2, input_precision="ieee")
        elif PREC == 1:
            d2 = tl.dot(Gt, W, input_precision="tf32x3")
        else:
            d2 = tl.dot(Gt, W, input_precision="ieee")
        dss = tl.load(dss_ptr + t0 + rl, mask=rmask, other=0.0)
        dx = tl.reshape(d2, [BT, NB, BC]) + 2.0 * x3.to(tl.float32) * dss[:, None, None]
        r2 = (t0 + rl).to(tl.int64)
        m2 = rmask[:, None] & (ii < n)[None, :]
        if HAS_PRE:
            hp = tl.load(hpre_ptr + r2[:, None] * n + ii[None, :], mask=m2, other=0.0)
            dhv = tl.load(dh_ptr + r2[:, None] * C + (c0 + cc)[None, :],
                          mask=rmask[:, None] & cmask[None, :], other=0.0)
            dx += hp[:, :, None] * dhv.to(tl.float32)[:, None, :]
        if HAS_RES:
            for j in tl.static_range(n):
                hr = tl.load(hres_ptr + r2[:, None] * (n * n) + j * n + ii[None, :], mask=m2,
                             other=0.0)  # H_res[t, j, i] over i
                gj = tl.load(gout_ptr + t0.to(tl.int64) * K + rl[:, None] * K + j * C
                             + (c0 + cc)[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)
                dx += hr[:, :, None] * gj.to(tl.float32)[:, None, :]
        tl.store(dx_ptr + t0.to(tl.int64) * K + off3, dx.to(dx_ptr.dtype.element_ty), mask=m3)


def _coef_dfn_kernel(x_ptr, g_ptr, dfn_ptr, T, K, t_per_split,
                     N: tl.constexpr, NP: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                     PREC: tl.constexpr):
    # dfn[o, k] = sum_t G[t, o] x[t, k] over this program's token range (x as (T, nC))
    pid_s = tl.program_id(1)
    ks, kmask = _slice(tl.program_id(0), BK, K)
    oo = tl.arange(0, NP)
    acc = tl.zeros([NP, BK], dtype=tl.float32)
    t_lo = pid_s * t_per_split
    for tt in range(0, t_per_split, BT):
        rows = t_lo + tt + tl.arange(0, BT)
        rmask = rows < T
        r64 = rows.to(tl.int64)
        xt = tl.load(x_ptr + r64[:, None] * K + ks[None, :], mask=rmask[:, None] & kmask[None, :],
                     other=0.0)
        GT = tl.load(g_ptr + r64[None, :] * NP + oo[:, None],
                     mask=(oo < N)[:, None] & rmask[None, :], other=0.0)  # [NP, BT]
        if PREC >= 2:
            G_hi, G_lo = _split_hi_lo(GT, PREC)
            if PREC == 2:
                acc = tl.dot(G_hi, xt, acc)
                acc = tl.dot(G_lo, xt, acc)
            else:
                acc = tl.dot(G_hi, xt.to(tl.float32), acc, input_precision="ieee")
                acc = tl.dot(G_lo, xt.to(tl.float32), acc, input_precision="ieee")
        elif PREC == 1:
            acc = tl.dot(GT, xt.to(tl.float32), acc, input_precision="tf32x3")
        else:
            acc = tl.dot(GT, xt.to(tl.float32), acc, input_precision="ieee")
    tl.store(dfn_ptr + (pid_s * NP + oo[:, None]).to(tl.int64) * K + ks[None, :], acc,
             mask=(oo < N)[:, None] & kmask[None, :])


_coef_dx4 = LazyJit(_coef_dx4_kernel, helpers=(_split_hi_lo, _bf16_hi, _slice, _dx4_stream))
_coef_bwd_x = LazyJit(_coef_bwd_x_kernel, helpers=(_split_hi_lo,))
_coef_dfn = LazyJit(_coef_dfn_kernel, helpers=(_split_hi_lo, _slice))


def dx_and_dfn_triton(x, fn, G, dss, red, h_pre=None, dh=None, h_res=None, gout=None,
                      shape=None):
    """``(dx, dfn, d_gates)`` from ``G = d mix (T, NP)``, ``dss = d(sum x^2) (T,)`` and the
    token kernel's partial ``d_gates`` sums ``red``; with ``h_pre, dh`` and ``h_res, gout``
    given, ``dx`` also holds ``H_pre_i dh + sum_j H_res[j, i] gout_j``. ``dx`` has ``x``'s
    shape; ``shape`` is ``tuning.stream_shape(x)`` where the caller has it."""
    if x.dtype == torch.bfloat16 and x.shape[-2] <= 4:
        dx, dfn_p = _dx4_pass(x, fn, G, dss, h_pre, dh, h_res, gout, shape or stream_shape(x))
    else:  # the general kernels read contiguous (T, n, C) streams only
        lead, x = x.shape, x.reshape(-1, *x.shape[-2:]).contiguous()
        gout = None if gout is None else gout.reshape(x.shape).contiguous()
        dx = _dx_pass(x, fn, G, dss, h_pre, dh, h_res, gout).view(lead)
        dfn_p = _dfn_pass(x, G)
    return (dx, *_grad_sums(dfn_p, red))


def _extras(G, h_pre, dh, h_res, gout):
    """The pre-mix and post-res inputs of the dx pass (``G`` stands in for absent ones)."""
    has_pre, has_gout = dh is not None, gout is not None
    return (h_pre if has_pre else G, dh if has_pre else G, h_res if has_gout else G,
            gout if has_gout else G)


def _token_split(T, BT, tiles_per_program):
    """``(tsplit, t_per_split)``: ``tsplit`` programs per channel slice over the tokens,
    ``t_per_split`` tokens (about ``tiles_per_program`` tiles of ``BT``) each."""
    t_tiles = triton_cdiv(T, BT)
    t_per_split = triton_cdiv(t_tiles, triton_cdiv(t_tiles, tiles_per_program)) * BT
    return triton_cdiv(T, t_per_split), t_per_split


def _dx_tiles(cfg, C):
    """``(BT, BC)`` of a dx pass: the configuration's, fitted to ``C`` (interpreter: small)."""
    if interpret_mode():
        return 16, min(cfg["BC"], 32)
    return cfg["BT"], min(cfg["BC"], next_pow2(C))


def _grad_sums_kernel(part_ptr, red_ptr, dfn_ptr, gates_ptr, S, NK, part_stride, R,
                      G: tl.constexpr, BC: tl.constexpr, BT: tl.constexpr, BR: tl.constexpr):
    # The backward's two small reductions in one launch (each was a PyTorch reduction of its
    # own), every load of a program issued at once (no chain of dependent loads):
    # * programs 0 .. cdiv(NK, BC) - 1: dfn[j] = sum_s part[s, j] over the first N K values
    #   of each partial (flattened), BT partials a step;
    # * the last G programs, one column c each: gates[c] = sum_r red[r, c] over the token
    #   kernel's per-program dscale / dbase partials, BR rows a step.
    # Fixed summation orders: the results do not depend on scheduling.
    pid = tl.program_id(0)
    nb = tl.cdiv(NK, BC)
    if pid < nb:
        offs = pid * BC + tl.arange(0, BC)
        ss = tl.arange(0, BT)
        acc = tl.zeros([BT, BC], dtype=tl.float32)
        for s0 in range(0, S, BT):
            rows = (s0 + ss).to(tl.int64)
            acc += tl.load(part_ptr + rows[:, None] * part_stride + offs[None, :],
                           mask=(rows < S)[:, None] & (offs < NK)[None, :], other=0.0)
        tl.store(dfn_ptr + offs, tl.sum(acc, axis=0), mask=offs < NK)
    else:
        rr = tl.arange(0, BR)
        acc2 = tl.zeros([BR], dtype=tl.float32)
        for r0 in range(0, R, BR):
            rows = r0 + rr
            acc2 += tl.load(red_ptr + rows * G + (pid - nb), mask=rows < R, other=0.0)
        tl.store(gates_ptr + (pid - nb), tl.sum(acc2, axis=0))


_grad_sums_lazy = LazyJit(_grad_sums_kernel)


def _sums_plan(cfg, NK, G, interpret, **_):
    BC, BR = (128, 64) if interpret else (cfg["BC"], 1024)
    return Launch(_grad_sums_lazy, (triton_cdiv(NK, BC) + G,), interpret, G=G, BC=BC,
                  BT=cfg["BT"], BR=BR, num_warps=cfg["num_warps"])


def _grad_sums(dfn_p, red):
    """``(dfn (N, K), d_gates)`` from the dx pass's dfn partials ``(tsplit, NP, K)`` and the
    token kernel's ``red (programs, 3 + N)``: one launch, no branch on ``tsplit`` or on the
    program count (either would guard a compiled graph's dynamic token count)."""
    S, NP, K = dfn_p.shape
    R, G = red.shape
    N = G - 3
    launch = launch_plan("grad_sums", _sums_plan, NK=N * K, G=G, interpret=interpret_mode())
    dfn = torch.empty(N, K, device=dfn_p.device, dtype=torch.float32)
    gates = torch.empty(G, device=red.device, dtype=torch.float32)
    launch(dfn_p, red, dfn, gates, S, N * K, NP * K, R)
    return dfn, gates


def _dx4_plan(cfg, T, n, C, dtype, broadcast, interpret, flags, **_):
    BT, BC = _dx_tiles(cfg, C)
    tsplit, _ = _token_split(T, BT, cfg["tiles_per_program"])
    has_pre, has_res, g_broadcast = flags
    return tsplit, triton_cdiv(triton_cdiv(T, BT), tsplit), Launch(
        _coef_dx4, (triton_cdiv(C, BC), tsplit), interpret, n=n, N=(n + 2) * n,
        NP=max(16, next_pow2((n + 2) * n)), BT=BT, BC=BC, PREC=dot_mode(dtype),
        PIPELINE_STAGES=cfg["pipeline_stages"], HAS_PRE=has_pre, HAS_RES=has_res,
        X_BROADCAST=broadcast, G_BROADCAST=g_broadcast, num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"])


def _dx4_pass(x, fn, G, dss, h_pre, dh, h_res, gout, shape):
    T, n, C = shape["T"], shape["n"], shape["C"]
    K, NP = n * C, G.shape[1]
    tsplit, tiles, launch = launch_plan(
        "coef_dx4", _dx4_plan, flags=(dh is not None, gout is not None, is_broadcast(gout)),
        **shape)
    dx = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    dfn_p = torch.empty(tsplit, NP, K, device=x.device, dtype=torch.float32)
    # interleaved token tiles: ``tsplit`` programs per channel slice, each every tsplit-th
    launch(x, fn.contiguous(), G, dss, dx, dfn_p, *_extras(G, h_pre, dh, h_res, gout), T, C, K,
           tiles, tsplit)
    return dx, dfn_p


def _dx_pass(x, fn, G, dss, h_pre, dh, h_res, gout):
    T, n, C = x.shape
    K, N, NP, NB = n * C, (n + 2) * n, G.shape[1], next_pow2(n)
    cfg = launch_config("coef_dx", **stream_shape(x))
    BT, BC = _dx_tiles(cfg, C)
    tsplit, t_per_split = _token_split(T, BT, cfg["tiles_per_program"])
    dx = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    _coef_bwd_x[(triton_cdiv(C, BC), tsplit)](
        x, fn.contiguous(), G, dss, dx, *_extras(G, h_pre, dh, h_res, gout), T, C, K,
        t_per_split, n=n, N=N, NB=NB, NP=NP, BT=BT, BC=BC, QB=NB * BC, PREC=dot_mode(x.dtype),
        HAS_PRE=dh is not None, HAS_RES=gout is not None,
        PIPELINE_STAGES=cfg["pipeline_stages"], num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"])
    return dx


def _dfn_pass(x, G):
    T, n, C = x.shape
    K, N, NP = n * C, (n + 2) * n, G.shape[1]
    cfg = launch_config("coef_dfn", **stream_shape(x))
    BT, BK = (16, 32) if interpret_mode() else (cfg["BT"], cfg["BK"])
    k_tiles = triton_cdiv(K, BK)
    tsplit = torch.sym_max(1, torch.sym_min(triton_cdiv(T, BT),
                                            (cfg["waves"] * device_sms(x.device)) // k_tiles))
    t_per_split = triton_cdiv(triton_cdiv(T, BT), tsplit) * BT
    tsplit = triton_cdiv(T, t_per_split)
    dfn_p = torch.empty(tsplit, NP, K, device=x.device, dtype=torch.float32)
    _coef_dfn[(k_tiles, tsplit)](x, G, dfn_p, T, K, t_per_split, N=N, NP=NP, BT=BT, BK=BK,
                                 PREC=dot_mode(x.dtype), num_warps=cfg["num_warps"],
                                 num_stages=cfg["num_stages"])
    return dfn_p
