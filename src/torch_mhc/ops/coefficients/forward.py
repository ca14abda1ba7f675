"""Forward of the fused coefficients: two kernels (the paper's kernels 1-3, Sec. 4.3.1).

1. ``_coef_gemm_kernel``: one pass over x (T, nC): the projection x fn^T for all (n+2)n
   outputs (padded to a power of two >= 16 for ``tl.dot``) and sum(x^2), split over K = nC so
   that T/BT x SPLIT programs fill the GPU; partial sums go to a small (SPLIT, T, (n+2)n + 1)
   fp32 buffer.
2. ``_coef_token_kernel``: per token, reduce the partials, r = RMS(vec x) (Eq. 14), gates,
   biases, sigmoid / 2 sigmoid and Sinkhorn (Eq. 15-19, 9) in registers; writes H_pre,
   H_post, H_res and keeps the raw projection and 1/r (25 floats/token at n = 4) for the
   backward.

Padded Sinkhorn entries hold -1e30 ("minus infinity", finite: no inf - inf).
"""
from __future__ import annotations

import torch

from .._launch import LazyJit, Launch, dot_mode, fit_channel_tile, next_pow2, num_sms, triton_cdiv
from .._tiles import _gates, _split_hi_lo, _token_tile
from ..pre_mix import pre_mix_forward_triton
from ..tuning import launch_plan, stream_shape


def _coef_gemm_kernel(x_ptr, fn_ptr, part_ptr, T, K, C, k_per_split, split,
                      N: tl.constexpr, NP: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                      PREC: tl.constexpr, X_BROADCAST: tl.constexpr):
    # part[s, t, :N] = x[t, ks] @ fn[:, ks]^T over this program's K-slice ks; part[s, t, N] = sum x^2
    # Token tiles in descending order, a tile's K-slices launched together: the previous
    # connection's post-res wrote x ascending, so its last rows are still in L2 (see
    # ``_launch`` "launch order").
    pid = tl.program_id(0)
    pid_s = pid % split
    pid_t = tl.cdiv(T, BT) - 1 - pid // split
    rows = pid_t * BT + tl.arange(0, BT)
    rmask = rows < T
    r64 = rows.to(tl.int64)
    oo = tl.arange(0, NP)
    omask = oo < N
    acc = tl.zeros([BT, NP], dtype=tl.float32)
    ss = tl.zeros([BT], dtype=tl.float32)
    k_lo = pid_s * k_per_split
    for kk in range(0, k_per_split, BK):
        ks = k_lo + kk + tl.arange(0, BK)
        kmask = ks < K
        if X_BROADCAST:  # x a broadcast (T, C) -> (T, n, C) view: stream stride 0
            xt = tl.load(x_ptr + r64[:, None] * C + (ks % C)[None, :],
                         mask=rmask[:, None] & kmask[None, :], other=0.0)
        else:
            xt = tl.load(x_ptr + r64[:, None] * K + ks[None, :],
                         mask=rmask[:, None] & kmask[None, :], other=0.0)
        xf = xt.to(tl.float32)
        ss += tl.sum(xf * xf, axis=1)
        w = tl.load(fn_ptr + oo[None, :] * K + ks[:, None],
                    mask=omask[None, :] & kmask[:, None], other=0.0).to(tl.float32)  # [BK, NP]
        if PREC >= 2:  # bf16 x: w = hi + lo, two bf16 products (x is exact in bf16)
            w_hi, w_lo = _split_hi_lo(w, PREC)
            if PREC == 2:
                acc = tl.dot(xt, w_hi, acc)
                acc = tl.dot(xt, w_lo, acc)
            else:  # interpreter: the same split, products in float32
                acc = tl.dot(xf, w_hi, acc, input_precision="ieee")
                acc = tl.dot(xf, w_lo, acc, input_precision="ieee")
        elif PREC == 1:
            acc = tl.dot(xf, w, acc, input_precision="tf32x3")
        else:
            acc = tl.dot(xf, w, acc, input_precision="ieee")
    out = part_ptr + (pid_s * T + r64) * (N + 1)
    tl.store(out[:, None] + oo[None, :], acc, mask=rmask[:, None] & omask[None, :])
    tl.store(out + N, ss, mask=rmask)


def _coef_token_kernel(part_ptr, scale_ptr, base_ptr, mix_ptr, hpre_ptr, hpost_ptr, hres_ptr,
                       x_ptr, h_ptr, T, SPLIT, K, C, iters, rms_eps, hc_eps,
                       n: tl.constexpr, N: tl.constexpr, NB: tl.constexpr, BT: tl.constexpr,
                       BC: tl.constexpr, LOG: tl.constexpr, PRE_MIX: tl.constexpr,
                       X_BROADCAST: tl.constexpr, PIPELINE_STAGES: tl.constexpr,
                       PHASE_SPLIT: tl.constexpr):
    # float32 whatever the launcher passed: Inductor passes Python floats as float64, which
    # would turn 1/r and the whole Sinkhorn chain float64 (1.4x slower on an H100)
    rms_eps = tl.cast(rms_eps, tl.float32)
    hc_eps = tl.cast(hc_eps, tl.float32)
    pid = tl.program_id(0)
    rows, rmask, r64, ii, m2, aa, bb, valid, m3 = _token_tile(pid, T, n, NB, BT)
    pre = tl.zeros([BT, NB], dtype=tl.float32)
    post = tl.zeros([BT, NB], dtype=tl.float32)
    comb = tl.zeros([BT, NB, NB], dtype=tl.float32)
    ss = tl.zeros([BT], dtype=tl.float32)
    for s in range(SPLIT):  # reduce the split-K partials
        p = part_ptr + (s * T + r64) * (N + 1)
        pre += tl.load(p[:, None] + ii[None, :], mask=m2, other=0.0)
        post += tl.load(p[:, None] + n + ii[None, :], mask=m2, other=0.0)
        comb += tl.load(p[:, None, None] + 2 * n + aa * n + bb, mask=m3, other=0.0)
        ss += tl.load(p + N, mask=rmask, other=0.0)
    # (the gates and biases loaded before the first store: a load after it would wait)
    a_pre, a_post, a_res, b_pre, b_post, b_res = _gates(scale_ptr, base_ptr, ii, aa, bb, valid, n)
    # keep the raw projection (N floats) and 1/r for the backward
    mrow = mix_ptr + r64 * (N + 1)
    tl.store(mrow[:, None] + ii[None, :], pre, mask=m2)
    tl.store(mrow[:, None] + n + ii[None, :], post, mask=m2)
    tl.store(mrow[:, None, None] + 2 * n + aa * n + bb, comb, mask=m3)
    inv_r = 1.0 / tl.sqrt(ss / K + rms_eps)  # Eq. 14: r = ||vec x|| / sqrt(nC)
    tl.store(mrow + N, inv_r, mask=rmask)
    # Eq. 15-18: H~ = a * (x phi) / r + b; sigmoid, 2 sigmoid
    h_pre = tl.sigmoid(a_pre * pre * inv_r[:, None] + b_pre[None, :]) + hc_eps
    h_post = 2.0 * tl.sigmoid(a_post * post * inv_r[:, None] + b_post[None, :])
    tl.store(hpre_ptr + r64[:, None] * n + ii[None, :], h_pre, mask=m2)
    tl.store(hpost_ptr + r64[:, None] * n + ii[None, :], h_post, mask=m2)
    # PHASE_SPLIT: odd programs run the Sinkhorn before the pre-mix, so that some programs
    # stream x while others compute (all programs are resident at once)
    mix_late = False
    if PHASE_SPLIT:
        mix_late = (pid % 2) == 1
    if PRE_MIX:  # the pre-mix h = H_pre x (Eq. 3) of these tokens, as ``pre_mix`` computes it
        hp = tl.where(m2, h_pre, 0.0)
        if not mix_late:
            _premix_tile(x_ptr, h_ptr, hp, r64, rmask, m2, ii, C, K, BC, X_BROADCAST,
                         PIPELINE_STAGES)
    # Eq. 19, 9: Sinkhorn on comb (= H_res^T): normalising comb rows (axis 2) is T_c on H_res
    L = a_res * comb * inv_r[:, None, None] + b_res
    if LOG:  # paper: log domain, columns then rows of H_res
        L = tl.where(valid, L, -1.0e30)
        for _ in range(iters):
            mx = tl.max(L, axis=2)
            L = L - (mx + tl.log(tl.sum(tl.exp(L - mx[:, :, None]), axis=2)))[:, :, None]
            L = tl.where(valid, L, -1.0e30)
            mx = tl.max(L, axis=1)
            L = L - (mx + tl.log(tl.sum(tl.exp(L - mx[:, None, :]), axis=1)))[:, None, :]
            L = tl.where(valid, L, -1.0e30)
        P = tl.exp(L)
    else:  # DeepSeek-V4: softmax + eps, column norm, then (row, column) norms, each / (sum + eps)
        L = tl.where(valid, L, -1.0e30)
        mx = tl.max(L, axis=2)
        E = tl.exp(L - mx[:, :, None])
        P = tl.where(valid, E / tl.sum(E, axis=2)[:, :, None] + hc_eps, 0.0)
        P = P / (tl.sum(P, axis=1)[:, None, :] + hc_eps)
        for _ in range(iters - 1):
            P = P / (tl.sum(P, axis=2)[:, :, None] + hc_eps)
            P = P / (tl.sum(P, axis=1)[:, None, :] + hc_eps)
    # H_res[t, b, a] = comb[t, a, b]
    tl.store(hres_ptr + r64[:, None, None] * (n * n) + bb * n + aa, P, mask=m3)
    if PRE_MIX:
        if mix_late:
            _premix_tile(x_ptr, h_ptr, hp, r64, rmask, m2, ii, C, K, BC, X_BROADCAST,
                         PIPELINE_STAGES)


def _premix_tile(x_ptr, h_ptr, hp, r64, rmask, m2, ii, C, K, BC: tl.constexpr,
                 X_BROADCAST: tl.constexpr, PIPELINE_STAGES: tl.constexpr):
    """``h = H_pre x`` for one tile of tokens (``hp``: their H_pre, zero-padded), over the
    channels in tiles of ``BC``."""
    for c0 in tl.range(0, C, BC, num_stages=PIPELINE_STAGES):
        cc = c0 + tl.arange(0, BC)
        mc = rmask[:, None] & (cc < C)[None, :]
        if X_BROADCAST:  # x a broadcast view: h = (sum_i H_pre_i) x
            x2 = tl.load(x_ptr + r64[:, None] * C + cc[None, :], mask=mc, other=0.0)
            h = tl.sum(hp, axis=1)[:, None] * x2.to(tl.float32)
        else:
            x3 = tl.load(x_ptr + r64[:, None, None] * K + ii[None, :, None] * C
                         + cc[None, None, :], mask=m2[:, :, None] & (cc < C)[None, None, :],
                         other=0.0)
            h = tl.sum(x3.to(tl.float32) * hp[:, :, None], axis=1)
        tl.store(h_ptr + r64[:, None] * C + cc[None, :], h.to(h_ptr.dtype.element_ty), mask=mc)


_coef_gemm = LazyJit(_coef_gemm_kernel, helpers=(_split_hi_lo,))
_coef_token = LazyJit(_coef_token_kernel, helpers=(_token_tile, _gates, _premix_tile))


def _gemm_plan(cfg, T, n, C, dtype, broadcast, interpret, device, **_):
    K, N = n * C, (n + 2) * n
    BT, BK = (16, 32) if interpret else (cfg["BT"], cfg["BK"])
    tiles_t, k_tiles = triton_cdiv(T, BT), triton_cdiv(K, BK)
    # sym_max / sym_min: a dynamic T (torch.compile) stays symbolic, with no guard
    split = torch.sym_max(1, torch.sym_min(k_tiles, (cfg["waves"] * num_sms(device))
                                           // torch.sym_max(tiles_t, 1)))
    k_per_split = triton_cdiv(k_tiles, split) * BK
    split = triton_cdiv(K, k_per_split)
    return split, k_per_split, Launch(
        _coef_gemm, (tiles_t * split,), interpret, N=N, NP=max(16, next_pow2(N)), BT=BT, BK=BK,
        PREC=dot_mode(dtype), X_BROADCAST=broadcast, num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"])


def _token_plan(cfg, T, n, C, broadcast, interpret, log, with_h, **_):
    return Launch(_coef_token, (triton_cdiv(T, cfg["BT"]),), interpret, n=n, N=(n + 2) * n,
                  NB=next_pow2(n), BT=cfg["BT"], BC=fit_channel_tile(cfg["BC"], C), LOG=log,
                  PRE_MIX=with_h and bool(cfg["pre_mix"]), X_BROADCAST=broadcast,
                  PIPELINE_STAGES=cfg.get("pipeline_stages", 1),
                  PHASE_SPLIT=bool(cfg.get("phase_split", False)), num_warps=cfg["num_warps"])


def coef_forward_triton(x: torch.Tensor, fn: torch.Tensor, base: torch.Tensor, scale: torch.Tensor,
                        iters: int, rms_eps: float, hc_eps: float, shape=None,
                        pre_mix: bool = False):
    """Kernels 1-2: streams ``x (..., n, C)`` contiguous or broadcast
    (``_backend.is_broadcast``) -> ``H_pre, H_post, H_res, mix`` (fp32, leading dimensions
    as ``x``'s), and with ``pre_mix`` also the pre-mix ``h = H_pre x (..., C)``: written by
    the token kernel where its launch configuration says so (``pre_mix`` in
    ``tuning.LAUNCH_DEFAULTS["coef_token"]``), else by ``pre_mix``'s kernel. ``shape`` is
    ``tuning.stream_shape(x)`` where the caller has it.

    ``mix (..., N + 1)`` holds the raw projection ``x fn^T`` and ``1/r`` for the backward.
    """
    shape = shape or stream_shape(x)
    T, n, C = shape["T"], shape["n"], shape["C"]
    K, N, lead = n * C, (n + 2) * n, x.shape[:-2]
    split, k_per_split, gemm = launch_plan("coef_gemm", _gemm_plan, **shape)
    dev, f32 = x.device, torch.float32
    part = torch.empty(split, T, N + 1, device=dev, dtype=f32)
    gemm(x, fn.contiguous(), part, T, K, C, k_per_split, split)
    mix = torch.empty(*lead, N + 1, device=dev, dtype=f32)
    h_pre = torch.empty(*lead, n, device=dev, dtype=f32)
    h_post = torch.empty(*lead, n, device=dev, dtype=f32)
    h_res = torch.empty(*lead, n, n, device=dev, dtype=f32)
    token = launch_plan("coef_token", _token_plan, log=(hc_eps == 0.0), with_h=pre_mix, **shape)
    fused = token.kw["PRE_MIX"]
    h = torch.empty(*lead, C, device=dev, dtype=x.dtype) if fused else h_pre
    token(part, scale.contiguous(), base.contiguous(), mix, h_pre, h_post, h_res, x, h, T, split,
          K, C, int(iters), float(rms_eps), float(hc_eps))
    if not pre_mix:
        return h_pre, h_post, h_res, mix
    if not fused:
        h = pre_mix_forward_triton(x, h_pre, shape)
    return h_pre, h_post, h_res, mix, h
