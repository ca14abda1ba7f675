"""mHC coefficients: one pass over the streams to ``H_pre``, ``H_post``, ``H_res`` (Eq. 7-9).

Parameters use DeepSeek-V4's layout (spec section 6) so released checkpoints map one to one:

* ``fn``    ``[(n+2)n, nC]``: the projections ``phi^T``, rows ordered pre (n), post (n),
  comb (n^2); the RMSNorm weight is folded in (the norm itself is unweighted).
* ``base``  ``[(n+2)n]``: the static biases ``b_pre, b_post, b_res`` in the same order.
* ``scale`` ``[3]``: the gates ``a_pre, a_post, a_res``.

The comb block is V4's ``comb``, which is applied transposed: ``H_res = comb^T``.

Computed as the paper's efficient form (Eq. 10-19): ``x fn^T`` for all ``n^2 + 2n`` outputs
in one GEMM and ``r = ||vec x||_2 / sqrt(nC)`` from the same read of ``x``, then
``H~ = (1/r) * a * (x fn^T) + b``. Everything after the GEMM runs in float32 (float64 for float64 inputs).
"""
from __future__ import annotations

import functools
from typing import Tuple

import torch

from ._backend import (LazyJit, as_streams, compute_dtype, device_sms, dot_mode, interpret_mode,
                       is_broadcast, kernel_impl, next_pow2, resolve_backend, triton_cdiv, tuned)
from ._library import FusedOp
from .sinkhorn import sinkhorn, sinkhorn_vjp

__all__ = ["mhc_coefficients", "mhc_coefficients_reference", "split_logits"]

Coefficients = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def split_logits(mix: torch.Tensor, scale: torch.Tensor, base: torch.Tensor, n: int):
    """Gate and bias the projected ``(..., (n+2)n)`` values into pre, post and comb logits."""
    pre = scale[0] * mix[..., :n] + base[:n]
    post = scale[1] * mix[..., n:2 * n] + base[n:2 * n]
    comb = scale[2] * mix[..., 2 * n:] + base[2 * n:]
    return pre, post, comb.unflatten(-1, (n, n))


def mhc_coefficients_reference(x: torch.Tensor, fn: torch.Tensor, base: torch.Tensor,
                               scale: torch.Tensor, iters: int = 20, rms_eps: float = 1e-20,
                               hc_eps: float = 0.0) -> Coefficients:
    """Readable PyTorch form of Eq. 7-9 (float32 math; float64 stays float64). See module docstring for layouts.

    Returns ``H_pre (..., n)``, ``H_post (..., n)``, ``H_res (..., n, n)`` in float32, with
    ``new_stream_i = sum_j H_res[i, j] stream_j``.
    """
    n = x.shape[-2]
    dt = compute_dtype(x, fn, base, scale)
    xf = x.flatten(-2).to(dt)
    inv_r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + rms_eps)  # 1 / RMS(vec x)
    mix = (xf @ fn.to(dt).t()) * inv_r
    pre, post, comb = split_logits(mix, scale.to(dt), base.to(dt), n)
    h_pre = torch.sigmoid(pre) + hc_eps
    h_post = 2.0 * torch.sigmoid(post)
    h_res = sinkhorn(comb.transpose(-1, -2), iters, eps=hc_eps, check_finite=False)
    return h_pre, h_post, h_res


# =============================================================================================
# Fused Triton path
#
# Forward, two kernels (the paper's kernels 1-3, Sec. 4.3.1):
#   1. ``_coef_gemm_kernel``: one pass over x (T, nC): the projection x fn^T for all
#      (n+2)n outputs (padded to a power of two >= 16 for ``tl.dot``) and sum(x^2), split
#      over K = nC so that T/BT x SPLIT programs fill the GPU; partial sums go to a small
#      (SPLIT, T, (n+2)n + 1) fp32 buffer.
#   2. ``_coef_token_kernel``: per token, reduce the partials, r = RMS(vec x) (Eq. 14),
#      gates, biases, sigmoid / 2 sigmoid and Sinkhorn (Eq. 15-19, 9) in registers;
#      writes H_pre, H_post, H_res and keeps the raw projection and 1/r (25 floats/token
#      at n = 4) for the backward.
# Backward:
#   3. ``_coef_token_bwd_kernel``: recomputes the logits and the Sinkhorn iterations from
#      the saved projection (the per-step matrices go to a transient per-token scratch that
#      is written and read back by the same program, then freed) and runs them backwards:
#      dL for the (n+2)n logits -> G = dmix (T, NP), d(sum x^2), partial dscale/dbase.
#   4. dx = G fn + 2 x d(sum x^2) (+ the pre-mix and post-res terms when called from the
#      fused connection) and dfn = G^T x: each program takes a channel slice of every
#      stream and loops over a token range (the loop software-pipelined with ``tl.range``
#      stages, so the next tiles arrive by cp.async while one is computed), fn split hi/lo
#      once. bf16 streams with n <= 4 use ``_coef_dx4_kernel`` (each stream's tile a 2D
#      tensor of its own, dfn accumulated in the same pass by default); other cases
#      ``_coef_bwd_x_kernel`` (3D [BT, NB, BC] tiles) with ``_coef_dfn_kernel``, a skinny
#      GEMM that re-reads x (``TUNING["coef_bwd"]`` picks among them).
#
# Gradient formulas (mix = x fn^T, inv_r = (sum x^2 / K + eps)^-1/2, logit = a mix inv_r + b):
#   G      = dlogit * a * inv_r                       (d mix)
#   dinv_r = sum_o dlogit_o a_o mix_o,  d(sum x^2) = -dinv_r inv_r^3 / (2K)
#   dx     = G fn + 2 x d(sum x^2),  dfn = G^T x,  da = sum dlogit mix inv_r,  db = sum dlogit
# =============================================================================================

# padded Sinkhorn entries hold -1e30 ("minus infinity", finite: no inf - inf) in the kernels


def _split_hi_lo(v, PREC: tl.constexpr):
    """A float32 tile as two bf16 tiles ``hi + lo`` (held in float32 by the interpreter,
    ``PREC == 3``, which cannot multiply bf16 matrices)."""
    hi = v.to(tl.bfloat16)
    lo = (v - hi.to(tl.float32)).to(tl.bfloat16)
    if PREC == 3:
        hi = hi.to(tl.float32)
        lo = lo.to(tl.float32)
    return hi, lo


def _coef_gemm_kernel(x_ptr, fn_ptr, part_ptr, T, K, C, k_per_split, split,
                      N: tl.constexpr, NP: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                      PREC: tl.constexpr, XB: tl.constexpr):
    # part[s, t, :N] = x[t, ks] @ fn[:, ks]^T over this program's K-slice ks; part[s, t, N] = sum x^2
    # Token tiles in descending order, a tile's K-slices launched together: the previous
    # connection's post-res wrote x ascending, so its last rows are still in L2 (see
    # ``_backend`` "launch order").
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
        if XB:  # x a broadcast (T, C) -> (T, n, C) view: stream stride 0
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
                       T, SPLIT, K, iters, rms_eps, hc_eps,
                       n: tl.constexpr, N: tl.constexpr, NB: tl.constexpr, BT: tl.constexpr,
                       LOG: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BT + tl.arange(0, BT)
    rmask = rows < T
    r64 = rows.to(tl.int64)
    ii = tl.arange(0, NB)
    m2 = rmask[:, None] & (ii < n)[None, :]
    aa = tl.arange(0, NB)[None, :, None]  # comb row (V4 layout); H_res = comb^T
    bb = tl.arange(0, NB)[None, None, :]  # comb column
    valid = (aa < n) & (bb < n)
    m3 = rmask[:, None, None] & valid
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
    # keep the raw projection (N floats) and 1/r for the backward
    mrow = mix_ptr + r64 * (N + 1)
    tl.store(mrow[:, None] + ii[None, :], pre, mask=m2)
    tl.store(mrow[:, None] + n + ii[None, :], post, mask=m2)
    tl.store(mrow[:, None, None] + 2 * n + aa * n + bb, comb, mask=m3)
    inv_r = 1.0 / tl.sqrt(ss / K + rms_eps)  # Eq. 14: r = ||vec x|| / sqrt(nC)
    tl.store(mrow + N, inv_r, mask=rmask)
    a_pre = tl.load(scale_ptr).to(tl.float32)
    a_post = tl.load(scale_ptr + 1).to(tl.float32)
    a_res = tl.load(scale_ptr + 2).to(tl.float32)
    b_pre = tl.load(base_ptr + ii, mask=ii < n, other=0.0).to(tl.float32)
    b_post = tl.load(base_ptr + n + ii, mask=ii < n, other=0.0).to(tl.float32)
    b_res = tl.load(base_ptr + 2 * n + aa * n + bb, mask=valid, other=0.0).to(tl.float32)
    # Eq. 15-18: H~ = a * (x phi) / r + b; sigmoid, 2 sigmoid
    h_pre = tl.sigmoid(a_pre * pre * inv_r[:, None] + b_pre[None, :]) + hc_eps
    h_post = 2.0 * tl.sigmoid(a_post * post * inv_r[:, None] + b_post[None, :])
    tl.store(hpre_ptr + r64[:, None] * n + ii[None, :], h_pre, mask=m2)
    tl.store(hpost_ptr + r64[:, None] * n + ii[None, :], h_post, mask=m2)
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


def _coef_token_bwd_kernel(mix_ptr, scale_ptr, base_ptr, dpre_ptr, dpost_ptr, dres_ptr,
                           g_ptr, dss_ptr, red_ptr, scr_ptr,
                           T, K, iters, hc_eps, st_pre, st_post, st_res, n_part, st_part,
                           n: tl.constexpr, N: tl.constexpr, NB: tl.constexpr, NN: tl.constexpr,
                           NP: tl.constexpr, BT: tl.constexpr, LOG: tl.constexpr,
                           HAS_DPRE: tl.constexpr, HAS_DPOST: tl.constexpr,
                           HAS_DRES: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BT + tl.arange(0, BT)
    rmask = rows < T
    r64 = rows.to(tl.int64)
    ii = tl.arange(0, NB)
    m2 = rmask[:, None] & (ii < n)[None, :]
    aa = tl.arange(0, NB)[None, :, None]
    bb = tl.arange(0, NB)[None, None, :]
    valid = (aa < n) & (bb < n)
    m3 = rmask[:, None, None] & valid
    mrow = mix_ptr + r64 * (N + 1)
    pre = tl.load(mrow[:, None] + ii[None, :], mask=m2, other=0.0)
    post = tl.load(mrow[:, None] + n + ii[None, :], mask=m2, other=0.0)
    comb = tl.load(mrow[:, None, None] + 2 * n + aa * n + bb, mask=m3, other=0.0)
    inv_r = tl.load(mrow + N, mask=rmask, other=0.0)
    a_pre = tl.load(scale_ptr).to(tl.float32)
    a_post = tl.load(scale_ptr + 1).to(tl.float32)
    a_res = tl.load(scale_ptr + 2).to(tl.float32)
    b_pre = tl.load(base_ptr + ii, mask=ii < n, other=0.0).to(tl.float32)
    b_post = tl.load(base_ptr + n + ii, mask=ii < n, other=0.0).to(tl.float32)
    b_res = tl.load(base_ptr + 2 * n + aa * n + bb, mask=valid, other=0.0).to(tl.float32)
    # pre / post: d sigmoid = s (1 - s)
    s_pre = tl.sigmoid(a_pre * pre * inv_r[:, None] + b_pre[None, :])
    s_post = tl.sigmoid(a_post * post * inv_r[:, None] + b_post[None, :])
    if HAS_DPRE:
        d_pre = tl.load(dpre_ptr + r64[:, None] * st_pre + ii[None, :], mask=m2, other=0.0).to(tl.float32)
        d_pre = d_pre * s_pre * (1.0 - s_pre)
    else:
        d_pre = tl.zeros([BT, NB], dtype=tl.float32)
    if HAS_DPOST:
        # dH_post / dH_res arrive as n_part partial sums st_part floats apart (summed here)
        d_post = tl.zeros([BT, NB], dtype=tl.float32)
        for sp in range(n_part):
            d_post += tl.load(dpost_ptr + sp * st_part + r64[:, None] * st_post + ii[None, :],
                              mask=m2, other=0.0).to(tl.float32)
        d_post = 2.0 * d_post * s_post * (1.0 - s_post)
    else:
        d_post = tl.zeros([BT, NB], dtype=tl.float32)
    # Sinkhorn: re-run the iterations from the logits, keeping each step's input in the
    # per-token scratch (2 * iters matrices), then differentiate the steps in reverse order.
    L = a_res * comb * inv_r[:, None, None] + b_res
    L = tl.where(valid, L, -1.0e30)
    scr = scr_ptr + r64[:, None, None] * (2 * iters * NN) + aa * NB + bb
    if HAS_DRES:
        g_res = tl.zeros([BT, NB, NB], dtype=tl.float32)  # d H_res, transposed to comb's layout
        for sp in range(n_part):
            g_res += tl.load(dres_ptr + sp * st_part + r64[:, None, None] * st_res + bb * n + aa,
                             mask=m3, other=0.0).to(tl.float32)
        if LOG:
            for k in range(iters):
                tl.store(scr + (2 * k) * NN, L, mask=m3)
                mx = tl.max(L, axis=2)
                L = L - (mx + tl.log(tl.sum(tl.exp(L - mx[:, :, None]), axis=2)))[:, :, None]
                L = tl.where(valid, L, -1.0e30)
                tl.store(scr + (2 * k + 1) * NN, L, mask=m3)
                mx = tl.max(L, axis=1)
                L = L - (mx + tl.log(tl.sum(tl.exp(L - mx[:, None, :]), axis=1)))[:, None, :]
                L = tl.where(valid, L, -1.0e30)
            P = tl.exp(L)
            # d H_res -> d comb (transpose), then through P = exp(L)
            gy = g_res * P
            tl.debug_barrier()
            for kk in range(iters):
                k = iters - 1 - kk
                # y = Lin - lse(Lin) along axis 1  =>  dLin = dy - softmax(Lin) * sum(dy)
                Lin = tl.load(scr + (2 * k + 1) * NN, mask=m3, other=-1.0e30)
                mx = tl.max(Lin, axis=1)
                Q = tl.exp(Lin - mx[:, None, :])
                Q = tl.where(valid, Q / tl.sum(Q, axis=1)[:, None, :], 0.0)
                gy = tl.where(valid, gy - Q * tl.sum(gy, axis=1)[:, None, :], 0.0)
                Lin = tl.load(scr + (2 * k) * NN, mask=m3, other=-1.0e30)
                mx = tl.max(Lin, axis=2)
                Q = tl.exp(Lin - mx[:, :, None])
                Q = tl.where(valid, Q / tl.sum(Q, axis=2)[:, :, None], 0.0)
                gy = tl.where(valid, gy - Q * tl.sum(gy, axis=2)[:, :, None], 0.0)
            d_res = gy
        else:
            mx = tl.max(L, axis=2)
            E = tl.exp(L - mx[:, :, None])
            S0 = tl.where(valid, E / tl.sum(E, axis=2)[:, :, None], 0.0)  # softmax
            P = tl.where(valid, S0 + hc_eps, 0.0)
            tl.store(scr + NN, P, mask=m3)
            P = P / (tl.sum(P, axis=1)[:, None, :] + hc_eps)
            for k in range(1, iters):
                tl.store(scr + (2 * k) * NN, P, mask=m3)
                P = P / (tl.sum(P, axis=2)[:, :, None] + hc_eps)
                tl.store(scr + (2 * k + 1) * NN, P, mask=m3)
                P = P / (tl.sum(P, axis=1)[:, None, :] + hc_eps)
            gy = g_res
            tl.debug_barrier()
            # y = m / (sum(m) + eps)  =>  dm = (dy - sum(dy * y)) / (sum(m) + eps)
            for kk in range(iters):
                k = iters - 1 - kk
                Mc = tl.load(scr + (2 * k + 1) * NN, mask=m3, other=0.0)
                den_c = tl.sum(Mc, axis=1)[:, None, :] + hc_eps
                gy = tl.where(valid, (gy - tl.sum(gy * Mc, axis=1)[:, None, :] / den_c) / den_c, 0.0)
                if k > 0:
                    Mr = tl.load(scr + (2 * k) * NN, mask=m3, other=0.0)
                    den_r = tl.sum(Mr, axis=2)[:, :, None] + hc_eps
                    gy = tl.where(valid, (gy - tl.sum(gy * Mr, axis=2)[:, :, None] / den_r) / den_r, 0.0)
            # softmax: dL = s * (dy - sum(dy * s))
            d_res = tl.where(valid, S0 * (gy - tl.sum(gy * S0, axis=2)[:, :, None]), 0.0)
    else:
        d_res = tl.zeros([BT, NB, NB], dtype=tl.float32)
    # d logit -> G = d mix = dlogit * a / r; d inv_r; partial d scale, d base
    grow = g_ptr + r64 * NP
    tl.store(grow[:, None] + ii[None, :], d_pre * a_pre * inv_r[:, None], mask=m2)
    tl.store(grow[:, None] + n + ii[None, :], d_post * a_post * inv_r[:, None], mask=m2)
    tl.store(grow[:, None, None] + 2 * n + aa * n + bb, d_res * a_res * inv_r[:, None, None], mask=m3)
    m_pre = tl.sum(d_pre * pre, axis=1)
    m_post = tl.sum(d_post * post, axis=1)
    m_res = tl.sum(tl.sum(d_res * comb, axis=2), axis=1)
    dinv = a_pre * m_pre + a_post * m_post + a_res * m_res
    tl.store(dss_ptr + rows, -0.5 * dinv * inv_r * inv_r * inv_r / K, mask=rmask)
    # this program's partial d scale (3) and d base (N), one row of red[nprog, 3 + N]
    ds_row = red_ptr + pid * (3 + N)
    tl.store(ds_row, tl.sum(tl.where(rmask, m_pre * inv_r, 0.0), axis=0))
    tl.store(ds_row + 1, tl.sum(tl.where(rmask, m_post * inv_r, 0.0), axis=0))
    tl.store(ds_row + 2, tl.sum(tl.where(rmask, m_res * inv_r, 0.0), axis=0))
    db_row = ds_row + 3
    tl.store(db_row + ii, tl.sum(tl.where(m2, d_pre, 0.0), axis=0), mask=ii < n)
    tl.store(db_row + n + ii, tl.sum(tl.where(m2, d_post, 0.0), axis=0), mask=ii < n)
    db_res = tl.sum(tl.where(m3, d_res, 0.0), axis=0)  # [NB, NB]
    a2 = tl.arange(0, NB)[:, None]
    b2 = tl.arange(0, NB)[None, :]
    tl.store(db_row + 2 * n + a2 * n + b2, db_res, mask=(a2 < n) & (b2 < n))


def _coef_bwd_x_kernel(x_ptr, fn_ptr, g_ptr, dss_ptr, dx_ptr, dfn_ptr,
                       hpre_ptr, dh_ptr, hres_ptr, gout_ptr,
                       T, C, K, t_per_split,
                       n: tl.constexpr, N: tl.constexpr, NB: tl.constexpr, NP: tl.constexpr,
                       BT: tl.constexpr, BC: tl.constexpr, QB: tl.constexpr, PREC: tl.constexpr,
                       HAS_PRE: tl.constexpr, HAS_RES: tl.constexpr, DFN: tl.constexpr,
                       LS: tl.constexpr):
    # One pass over x for a channel slice [c0, c0 + BC) of every stream, over this program's
    # token range (the fn tile, split hi + lo once, stays in registers):
    #   dx[t, i, c] = sum_o G[t, o] fn[o, iC + c] + 2 x[t, i, c] dss[t]
    #                 (+ H_pre[t, i] dh[t, c])              pre-mix backward (HAS_PRE)
    #                 (+ sum_j H_res[t, j, i] g[t, j, c])   post-res backward (HAS_RES)
    #   dfn[o, iC + c] += sum_t G[t, o] x[t, i, c]          (only with DFN)
    # Stream tiles are 3D [BT, NB, BC] (c innermost, vector loads); the two products see
    # them flattened to [BT, NB * BC] (column i * BC + c).
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
    acc = tl.zeros([NP, QB], dtype=tl.float32)
    t_lo = pid_s * t_per_split
    for tt in tl.range(0, t_per_split, BT, num_stages=LS):
        t0 = t_lo + tt
        rl = tl.arange(0, BT)
        rmask = (t0 + rl) < T
        xb = x_ptr + t0.to(tl.int64) * K  # int32 offsets inside the tile
        m3 = rmask[:, None, None] & icmask[None, :, :]
        off3 = rl[:, None, None] * K + ic_off[None, :, :]
        x3 = tl.load(xb + off3, mask=m3, other=0.0)
        xt = tl.reshape(x3, [BT, QB])
        Gt = tl.load(g_ptr + (t0 + rl)[:, None].to(tl.int64) * NP + oo[None, :],
                     mask=rmask[:, None] & (oo < N)[None, :], other=0.0)
        if PREC >= 2:  # G = hi + lo: hi W_hi + hi W_lo + lo W_hi, and G^T x = hi^T x + lo^T x
            G_hi, G_lo = _split_hi_lo(Gt, PREC)
            if PREC == 2:
                d2 = tl.dot(G_hi, W_hi)
                d2 = tl.dot(G_hi, W_lo, d2)
                d2 = tl.dot(G_lo, W_hi, d2)
                if DFN:
                    acc = tl.dot(tl.trans(G_hi), xt, acc)
                    acc = tl.dot(tl.trans(G_lo), xt, acc)
            else:  # interpreter: the same split, products in float32
                d2 = tl.dot(G_hi, W_hi, input_precision="ieee")
                d2 = tl.dot(G_hi, W_lo, d2, input_precision="ieee")
                d2 = tl.dot(G_lo, W_hi, d2, input_precision="ieee")
                if DFN:
                    acc = tl.dot(tl.trans(G_hi), xt.to(tl.float32), acc, input_precision="ieee")
                    acc = tl.dot(tl.trans(G_lo), xt.to(tl.float32), acc, input_precision="ieee")
        elif PREC == 1:
            d2 = tl.dot(Gt, W, input_precision="tf32x3")
            if DFN:
                acc = tl.dot(tl.trans(Gt), xt.to(tl.float32), acc, input_precision="tf32x3")
        else:
            d2 = tl.dot(Gt, W, input_precision="ieee")
            if DFN:
                acc = tl.dot(tl.trans(Gt), xt.to(tl.float32), acc, input_precision="ieee")
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
    if DFN:
        acc3 = tl.reshape(acc, [NP, NB, BC])
        tl.store(dfn_ptr + (pid_s * NP + oo[:, None, None]).to(tl.int64) * K + ic_off[None, :, :],
                 acc3, mask=(oo < N)[:, None, None] & icmask[None, :, :])


def _dx4_stream(xb, dxb, hpre_ptr, hres_ptr, x_off, m2, r64, rmask, dss2, dhv, g0, g1, g2, g3,
                Gh, Gl, GhT, GlT, Wh, Wl, acc, C,
                i, n: tl.constexpr, PREC: tl.constexpr, HAS_PRE: tl.constexpr,
                HAS_RES: tl.constexpr, DFN: tl.constexpr, DXP: tl.constexpr, DFP: tl.constexpr,
                XB: tl.constexpr):
    """Stream ``i`` of one token tile of ``_coef_dx4_kernel``: writes its dx tile and
    returns its dfn accumulator ``acc`` updated (``XB``: ``xb`` is the tile itself, loaded
    once for every stream of a broadcast x)."""
    if XB:
        x = xb
    else:
        x = tl.load(xb + x_off + i * C, mask=m2, other=0.0)
    if PREC == 3:
        xd = x.to(tl.float32)
    else:
        xd = x
    d = tl.dot(Gh, Wh)
    if DXP == 3:
        d = tl.dot(Gh, Wl, d)
        d = tl.dot(Gl, Wh, d)
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
    if DFN:
        acc = tl.dot(GhT, xd, acc)
        if DFP == 2:
            acc = tl.dot(GlT, xd, acc)
    return acc


def _coef_dx4_kernel(x_ptr, fn_ptr, g_ptr, dss_ptr, dx_ptr, dfn_ptr,
                     hpre_ptr, dh_ptr, hres_ptr, gout_ptr,
                     T, C, K, tiles_per, tsplit,
                     n: tl.constexpr, N: tl.constexpr, NP: tl.constexpr,
                     BT: tl.constexpr, BC: tl.constexpr, PREC: tl.constexpr,
                     HAS_PRE: tl.constexpr, HAS_RES: tl.constexpr, DFN: tl.constexpr,
                     LS: tl.constexpr, DXP: tl.constexpr, DFP: tl.constexpr,
                     XB: tl.constexpr, GB: tl.constexpr, GTL: tl.constexpr, SP: tl.constexpr):
    # bf16 streams, n <= 4: the sums of ``_coef_bwd_x_kernel`` with every stream's tile a 2D
    # [BT, BC] tensor of its own (no 3D tile reshaped around ``tl.dot``; one
    # ``_dx4_stream`` call per stream, since Triton loops carry no lists of tiles), dfn
    # accumulated in the same pass, the token loop software-pipelined (``LS`` stages of
    # cp.async prefetch):
    #   dx[t, i, c] = sum_o G[t, o] fn[o, iC + c] + 2 x[t, i, c] dss[t] + H_pre[t, i] dh[t, c]
    #                 + sum_j H_res[t, j, i] g[t, j, c]
    #   dfn[o, iC + c] (this program's token tiles) = sum_t G[t, o] x[t, i, c]
    # Program (c, s) takes token tiles s, s + tsplit, s + 2 tsplit, ...: the whole grid moves
    # up the tokens together, starting where the pre-mix backward (descending) ended, with x
    # and dh still in L2, and ending where the next post-res backward starts.
    # Products: G = hi + lo and fn = hi + lo in bf16 (x is exact): G fn ~ hi hi + hi lo + lo hi
    # (DXP = 3, ~16-bit operands) or hi hi alone (DXP = 1); G^T x = hi^T x + lo^T x (DFP = 2)
    # or hi^T x (DFP = 1).
    # SP < n: each program writes the dx and dfn of SP streams only (s0 .. s0 + SP - 1), so it
    # holds SP fn tiles and dfn accumulators (fewer registers, more programs per SM); the n / SP
    # programs of one tile are adjacent in launch order and read the g tiles they all need
    # from L2 after the first one's read.
    if SP == n:
        pid_c = tl.program_id(0)
        s0 = 0
    else:
        pid_c = tl.program_id(0) // (n // SP)
        s0 = (tl.program_id(0) % (n // SP)) * SP
    pid_s = tl.program_id(1)
    cc = pid_c * BC + tl.arange(0, BC)
    cmask = cc < C
    oo = tl.arange(0, NP)
    rl = tl.arange(0, BT)
    w_mask = (oo < N)[:, None] & cmask[None, :]
    w_off = oo[:, None] * K + cc[None, :]
    w_off += s0 * C
    Wh0, Wl0 = _split_hi_lo(tl.load(fn_ptr + w_off + 0 * C, mask=w_mask & (SP > 0), other=0.0), PREC)
    Wh1, Wl1 = _split_hi_lo(tl.load(fn_ptr + w_off + 1 * C, mask=w_mask & (SP > 1), other=0.0), PREC)
    Wh2, Wl2 = _split_hi_lo(tl.load(fn_ptr + w_off + 2 * C, mask=w_mask & (SP > 2), other=0.0), PREC)
    Wh3, Wl3 = _split_hi_lo(tl.load(fn_ptr + w_off + 3 * C, mask=w_mask & (SP > 3), other=0.0), PREC)
    a0 = tl.zeros([NP, BC], dtype=tl.float32)
    a1 = tl.zeros([NP, BC], dtype=tl.float32)
    a2 = tl.zeros([NP, BC], dtype=tl.float32)
    a3 = tl.zeros([NP, BC], dtype=tl.float32)
    x_off = rl[:, None] * K + cc[None, :]
    for k in tl.range(0, tiles_per, num_stages=LS):
        t0 = (k * tsplit + pid_s) * BT
        rows = t0 + rl
        rmask = rows < T
        r64 = rows.to(tl.int64)
        m2 = rmask[:, None] & cmask[None, :]
        tb = t0.to(tl.int64) * K  # this tile's first row; int32 offsets inside it
        Gt = tl.load(g_ptr + r64[:, None] * NP + oo[None, :],
                     mask=rmask[:, None] & (oo < N)[None, :], other=0.0)
        Gh, Gl = _split_hi_lo(Gt, PREC)
        if GTL:  # G^T loaded as such (a second, L1-resident read) instead of transposed
            GhT, GlT = _split_hi_lo(tl.load(g_ptr + r64[None, :] * NP + oo[:, None],
                                            mask=(oo < N)[:, None] & rmask[None, :], other=0.0),
                                    PREC)
        else:
            GhT = tl.trans(Gh)
            GlT = tl.trans(Gl)
        dss2 = 2.0 * tl.load(dss_ptr + rows, mask=rmask, other=0.0)
        dhv, g0, g1, g2, g3 = None, None, None, None, None  # stay None for a term that is off
        if HAS_PRE:
            dhv = tl.load(dh_ptr + t0.to(tl.int64) * C + rl[:, None] * C + cc[None, :],
                          mask=m2, other=0.0)
        if HAS_RES:
            if GB:  # g a broadcast view (the gradient of reduce_streams): one load
                g0 = tl.load(gout_ptr + t0.to(tl.int64) * C + rl[:, None] * C + cc[None, :],
                             mask=m2, other=0.0)
                g1, g2, g3 = g0, g0, g0
            else:
                g0 = tl.load(gout_ptr + tb + x_off + 0 * C, mask=m2 & (n > 0), other=0.0)
                g1 = tl.load(gout_ptr + tb + x_off + 1 * C, mask=m2 & (n > 1), other=0.0)
                g2 = tl.load(gout_ptr + tb + x_off + 2 * C, mask=m2 & (n > 2), other=0.0)
                g3 = tl.load(gout_ptr + tb + x_off + 3 * C, mask=m2 & (n > 3), other=0.0)
        if XB:  # x a broadcast view: the same (T, C) tile for every stream
            xb = tl.load(x_ptr + t0.to(tl.int64) * C + rl[:, None] * C + cc[None, :],
                         mask=m2, other=0.0)
        else:
            xb = x_ptr + tb
        dxb = dx_ptr + tb
        a0 = _dx4_stream(xb, dxb, hpre_ptr, hres_ptr, x_off, m2, r64, rmask, dss2, dhv,
                         g0, g1, g2, g3, Gh, Gl, GhT, GlT, Wh0, Wl0, a0, C,
                         s0 + 0, n, PREC, HAS_PRE, HAS_RES, DFN, DXP, DFP, XB)
        if SP > 1:
            a1 = _dx4_stream(xb, dxb, hpre_ptr, hres_ptr, x_off, m2, r64, rmask, dss2, dhv,
                             g0, g1, g2, g3, Gh, Gl, GhT, GlT, Wh1, Wl1, a1, C,
                             s0 + 1, n, PREC, HAS_PRE, HAS_RES, DFN, DXP, DFP, XB)
        if SP > 2:
            a2 = _dx4_stream(xb, dxb, hpre_ptr, hres_ptr, x_off, m2, r64, rmask, dss2, dhv,
                             g0, g1, g2, g3, Gh, Gl, GhT, GlT, Wh2, Wl2, a2, C,
                             s0 + 2, n, PREC, HAS_PRE, HAS_RES, DFN, DXP, DFP, XB)
        if SP > 3:
            a3 = _dx4_stream(xb, dxb, hpre_ptr, hres_ptr, x_off, m2, r64, rmask, dss2, dhv,
                             g0, g1, g2, g3, Gh, Gl, GhT, GlT, Wh3, Wl3, a3, C,
                             s0 + 3, n, PREC, HAS_PRE, HAS_RES, DFN, DXP, DFP, XB)
    if DFN:
        out = dfn_ptr + pid_s.to(tl.int64) * NP * K + w_off
        tl.store(out + 0 * C, a0, mask=w_mask & (SP > 0))
        tl.store(out + 1 * C, a1, mask=w_mask & (SP > 1))
        tl.store(out + 2 * C, a2, mask=w_mask & (SP > 2))
        tl.store(out + 3 * C, a3, mask=w_mask & (SP > 3))


def _coef_dfn_kernel(x_ptr, g_ptr, dfn_ptr, T, K, t_per_split,
                     N: tl.constexpr, NP: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                     PREC: tl.constexpr):
    # dfn[o, k] = sum_t G[t, o] x[t, k] over this program's token range (x as (T, nC))
    pid_k = tl.program_id(0)
    pid_s = tl.program_id(1)
    ks = pid_k * BK + tl.arange(0, BK)
    kmask = ks < K
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


_coef_gemm = LazyJit(_coef_gemm_kernel, helpers=(_split_hi_lo,))
_coef_token = LazyJit(_coef_token_kernel)
_coef_token_bwd = LazyJit(_coef_token_bwd_kernel)
_coef_bwd_x = LazyJit(_coef_bwd_x_kernel, helpers=(_split_hi_lo,))
_coef_dfn = LazyJit(_coef_dfn_kernel, helpers=(_split_hi_lo,))
_coef_dx4 = LazyJit(_coef_dx4_kernel, helpers=(_split_hi_lo, _dx4_stream))


def _rows(t):
    """``t`` (T, ...) with contiguous rows at any row stride, as the token backward kernel
    reads it (``None`` passes through)."""
    if t is None:
        return None
    inner_ok = t.stride(-1) == 1 and (t.dim() == 2 or t.stride(-2) == t.shape[-1])
    return t if inner_ok else t.contiguous()


def _stride0(t):
    return 0 if t is None else t.stride(0)


def coef_forward_triton(x: torch.Tensor, fn: torch.Tensor, base: torch.Tensor, scale: torch.Tensor,
                        iters: int, rms_eps: float, hc_eps: float):
    """Kernels 1-2: ``x (T, n, C)`` contiguous or broadcast (``_backend.is_broadcast``) ->
    ``H_pre, H_post, H_res, mix`` (fp32).

    ``mix (T, N + 1)`` holds the raw projection ``x fn^T`` and ``1/r`` for the backward.
    """
    T, n, C = x.shape
    K, N = n * C, (n + 2) * n
    NP = max(16, next_pow2(N))
    dev = x.device
    # defaults: the fastest of benchmarks/sweep.py on an H100 at T = 4096, n = 4, C = 4096
    if x.element_size() == 2 and NP < 64:
        cfg = tuned("coef_gemm", BT=128, BK=128, num_warps=8, num_stages=3, waves=4)
    else:
        cfg = tuned("coef_gemm", BT=64 if NP < 64 else 32, BK=32, num_warps=4, num_stages=3,
                    waves=2)
    BT, BK = cfg["BT"], cfg["BK"]
    if interpret_mode():
        BT, BK = 16, 32
    tiles_t = triton_cdiv(T, BT)
    k_tiles = triton_cdiv(K, BK)
    split = max(1, min(k_tiles, (cfg["waves"] * device_sms(dev)) // max(tiles_t, 1)))
    k_per_split = triton_cdiv(k_tiles, split) * BK
    split = triton_cdiv(K, k_per_split)
    part = torch.empty(split, T, N + 1, device=dev, dtype=torch.float32)
    fn_c = fn.contiguous()
    _coef_gemm[(tiles_t * split,)](x, fn_c, part, T, K, C, k_per_split, split, N=N, NP=NP,
                                   BT=BT, BK=BK, PREC=dot_mode(x.dtype), XB=is_broadcast(x),
                                   num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    mix = torch.empty(T, N + 1, device=dev, dtype=torch.float32)
    h_pre = torch.empty(T, n, device=dev, dtype=torch.float32)
    h_post = torch.empty(T, n, device=dev, dtype=torch.float32)
    h_res = torch.empty(T, n, n, device=dev, dtype=torch.float32)
    NB = next_pow2(n)
    cfg = tuned("coef_token", BT=8, num_warps=1 if NB <= 4 else 2)
    BT2 = cfg["BT"]
    _coef_token[(triton_cdiv(T, BT2),)](
        part, scale.contiguous(), base.contiguous(), mix, h_pre, h_post, h_res,
        T, split, K, int(iters), float(rms_eps), float(hc_eps),
        n=n, N=N, NB=NB, BT=BT2, LOG=(hc_eps == 0.0), num_warps=cfg["num_warps"])
    return h_pre, h_post, h_res, mix


def coef_backward_triton(x, fn, base, scale, mix, d_pre, d_post, d_res, iters, hc_eps,
                         h_pre=None, dh=None, h_res=None, gout=None):
    """Kernels 3-4: gradients to ``x, fn, base, scale`` from those of ``H_pre, H_post, H_res``.

    With ``h_pre, dh`` (pre-mix) and ``h_res, gout`` (post-res) given, ``dx`` also holds
    ``H_pre_i dh`` and ``sum_j H_res[j, i] gout_j``: the whole connection's ``dx`` in one pass.
    """
    T, n, C = x.shape
    K, N = n * C, (n + 2) * n
    NP = max(16, next_pow2(N))
    NB = next_pow2(n)
    dev = x.device
    cfg = tuned("coef_token_bwd", BT=4, num_warps=1 if NB <= 4 else 2)
    BT2 = 8 if interpret_mode() else cfg["BT"]
    nprog = triton_cdiv(T, BT2)
    G = torch.empty(T, NP, device=dev, dtype=torch.float32)
    dss = torch.empty(T, device=dev, dtype=torch.float32)
    red = torch.empty(nprog, 3 + N, device=dev, dtype=torch.float32)
    d_pre, d_post, d_res = _rows(d_pre), _rows(d_post), _rows(d_res)
    n_part, st_part = 1, 0
    has_res = d_res is not None
    scr = torch.empty(T * 2 * int(iters) * NB * NB if has_res else 1, device=dev, dtype=torch.float32)
    dummy = mix
    _coef_token_bwd[(nprog,)](
        mix, scale.contiguous(), base.contiguous(),
        d_pre if d_pre is not None else dummy, d_post if d_post is not None else dummy,
        d_res if has_res else dummy, G, dss, red, scr, T, K, int(iters), float(hc_eps),
        _stride0(d_pre), _stride0(d_post), _stride0(d_res), n_part, st_part,
        n=n, N=N, NB=NB, NN=NB * NB, NP=NP, BT=BT2, LOG=(hc_eps == 0.0), HAS_DPRE=d_pre is not None,
        HAS_DPOST=d_post is not None, HAS_DRES=has_res, num_warps=cfg["num_warps"])
    del scr
    # pass(es) over x: dx and dfn
    prec = dot_mode(x.dtype)
    # bf16 streams, n <= 4: ``_coef_dx4_kernel`` (2D per-stream tiles); otherwise the 3D-tile
    # kernel. Each program takes a channel slice and loops over ``loop`` token tiles with its
    # fn tile split once; dfn = G^T x either in the same pass (token-range partials) or in
    # the skinny GEMM ``_coef_dfn_kernel`` that reads x again.
    dx4 = tuned("coef_bwd", kernel="mma4")["kernel"] == "mma4" and n <= 4 \
        and x.dtype == torch.bfloat16
    if not dx4:  # only the dx4 kernel reads broadcast streams as they are
        x = x.contiguous()
        gout = None if gout is None else gout.contiguous()
    dx = torch.empty(x.shape, device=dev, dtype=x.dtype)
    has_pre = dh is not None
    has_gout = gout is not None
    extras = (h_pre if has_pre else G, dh if has_pre else G, h_res if has_gout else G,
              gout if has_gout else G)
    # defaults: the fastest of benchmarks/sweep.py on an H100 at T = C = 4096, n = 4, bf16;
    # the 3D-tile kernel keeps NB * BC <= 128 and one stage for n = 8 (shared memory)
    if dx4:
        # dxp=1: G fn from the bf16 high parts alone; the product's ~2^-9 relative error is
        # that of the bf16 dx it is stored into, and it saves two of five MMAs per tile (the
        # pass is MMA-bound on an H100: 239 -> 210 us for the whole coefficient backward)
        # gtl: G^T loaded as such, not transposed in registers (sm_90: 56 instead of 264 bytes
        # of stack; the coefficient backward 188.8 vs 195.1 us on an H200)
        cfg = tuned("coef_dx4", BT=32, BC=64, num_warps=4, num_stages=2, loop=32, dfn=True, ls=2,
                    dxp=1, dfp=2, gtl=True)
    elif tuned("coef_bwd", split=True)["split"]:
        cfg = tuned("coef_dx", BT=64 if x.element_size() == 2 and NB <= 4 else 32,
                    BC=max(16, 128 // NB), num_warps=4, num_stages=2, loop=16, dfn=False,
                    ls=3 if NB <= 4 and x.element_size() == 2 else (2 if NB <= 4 else 1))
    else:
        BC = max(16, min(next_pow2(C), 8192 // (NB * NP)))
        if x.element_size() > 2:
            BC = max(16, BC // 2)
        cfg = tuned("coef_bwd_x", BT=16, BC=BC, num_warps=4, num_stages=2, waves=2, dfn=True, ls=1)
    fused = cfg["dfn"]
    BT, BC = (16, min(cfg["BC"], 32)) if interpret_mode() else (cfg["BT"], min(cfg["BC"], next_pow2(C)))
    c_tiles, t_tiles = triton_cdiv(C, BC), triton_cdiv(T, BT)
    if "loop" in cfg:
        tsplit = triton_cdiv(t_tiles, cfg["loop"])
    else:
        tsplit = max(1, min(t_tiles, (cfg["waves"] * device_sms(dev)) // c_tiles))
    t_per_split = triton_cdiv(t_tiles, tsplit) * BT
    tsplit = triton_cdiv(T, t_per_split)
    dfn_p = torch.empty(tsplit, NP, K, device=dev, dtype=torch.float32) if fused else G
    # ``ls``: software-pipeline stages of the token loop (``tl.range``): >= 2 prefetches the
    # next tiles into shared memory with cp.async while the current one is computed
    if dx4:  # interleaved token tiles: ``tsplit`` programs per channel slice, each every tsplit-th
        sp = cfg.get("sp") or n
        sp = sp if n % sp == 0 else n  # streams per program
        _coef_dx4[(c_tiles * (n // sp), tsplit)](
            x, fn.contiguous(), G, dss, dx, dfn_p, *extras, T, C, K,
            triton_cdiv(t_tiles, tsplit), tsplit,
            n=n, N=N, NP=NP, BT=BT, BC=BC, PREC=prec, HAS_PRE=has_pre, HAS_RES=has_gout,
            DFN=fused, LS=cfg["ls"], DXP=cfg["dxp"], DFP=cfg["dfp"], XB=is_broadcast(x),
            GB=is_broadcast(gout), GTL=cfg["gtl"], SP=sp, num_warps=cfg["num_warps"],
            num_stages=cfg["num_stages"],
            **({"maxnreg": cfg["maxnreg"]} if cfg.get("maxnreg") and not interpret_mode() else {}))
    else:
        _coef_bwd_x[(c_tiles, tsplit)](
            x, fn.contiguous(), G, dss, dx, dfn_p, *extras, T, C, K, t_per_split,
            n=n, N=N, NB=NB, NP=NP, BT=BT, BC=BC, QB=NB * BC, PREC=prec, HAS_PRE=has_pre,
            HAS_RES=has_gout, DFN=fused, LS=cfg["ls"], num_warps=cfg["num_warps"],
            num_stages=cfg["num_stages"])
    if not fused:
        cfg = tuned("coef_dfn", BT=64, BK=32, num_warps=2, num_stages=4, waves=1)
        BT, BK = (16, 32) if interpret_mode() else (cfg["BT"], cfg["BK"])
        k_tiles = triton_cdiv(K, BK)
        tsplit = max(1, min(triton_cdiv(T, BT), (cfg["waves"] * device_sms(dev)) // k_tiles))
        t_per_split = triton_cdiv(triton_cdiv(T, BT), tsplit) * BT
        tsplit = triton_cdiv(T, t_per_split)
        dfn_p = torch.empty(tsplit, NP, K, device=dev, dtype=torch.float32)
        _coef_dfn[(k_tiles, tsplit)](x, G, dfn_p, T, K, t_per_split, N=N, NP=NP, BT=BT, BK=BK,
                                     PREC=prec, num_warps=cfg["num_warps"],
                                     num_stages=cfg["num_stages"])
    # partials summed as contiguous rows (an outer reduction torch vectorises)
    dfn = dfn_p.view(tsplit, -1)[:, :N * K].sum(0).view(N, K) if tsplit > 1 else dfn_p[0, :N]
    return dx, dfn, red.sum(0)


# -- the same decomposition in PyTorch: documents the kernels' math, runs any dtype (float64
#    for gradcheck of the autograd glue) --------------------------------------------------------

def coef_forward_torch(x, fn, base, scale, iters, rms_eps, hc_eps):
    """PyTorch twin of :func:`coef_forward_triton` (same outputs, the input's float dtype)."""
    T, n, C = x.shape
    dt = compute_dtype(x)
    xf = x.reshape(T, n * C).to(dt)
    proj = xf @ fn.to(dt).t()
    inv_r = torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) / (n * C) + rms_eps)
    pre, post, comb = split_logits(proj * inv_r, scale.to(dt), base.to(dt), n)
    h_pre = torch.sigmoid(pre) + hc_eps
    h_post = 2.0 * torch.sigmoid(post)
    h_res = sinkhorn(comb.transpose(-1, -2), iters, eps=hc_eps, check_finite=False)
    return h_pre, h_post, h_res.contiguous(), torch.cat([proj, inv_r], -1)


def coef_backward_torch(x, fn, base, scale, mix, d_pre, d_post, d_res, iters, hc_eps,
                        h_pre=None, dh=None, h_res=None, gout=None):
    """PyTorch twin of :func:`coef_backward_triton` (explicit formulas, see the header)."""
    T, n, C = x.shape
    K, N = n * C, (n + 2) * n
    dt = mix.dtype
    proj, inv_r = mix[:, :N], mix[:, N:]
    a, b = scale.to(dt), base.to(dt)
    gate = torch.cat([a[0].expand(n), a[1].expand(n), a[2].expand(n * n)])
    logits = gate * proj * inv_r + b
    zero = torch.zeros((), dtype=dt, device=mix.device)
    d_pre, d_post = (zero if g is None else g.to(dt) for g in (d_pre, d_post))
    s_pre, s_post = torch.sigmoid(logits[:, :n]), torch.sigmoid(logits[:, n:2 * n])
    d_comb = torch.zeros_like(logits[:, 2 * n:])
    if d_res is not None:  # H_res = sinkhorn(comb^T)
        comb_t = logits[:, 2 * n:].unflatten(-1, (n, n)).transpose(-1, -2)
        d_comb = sinkhorn_vjp(comb_t, d_res, iters, hc_eps).transpose(-1, -2).flatten(1)
    dlogit = torch.cat([d_pre * s_pre * (1 - s_pre), 2.0 * d_post * s_post * (1 - s_post),
                        d_comb], -1)
    G = dlogit * gate * inv_r
    dinv = (dlogit * gate * proj).sum(-1, keepdim=True)
    dss = -0.5 * dinv * inv_r ** 3 / K
    xf = x.reshape(T, K).to(dt)
    dx = G @ fn.to(dt) + 2.0 * xf * dss
    dx = dx.view(T, n, C)
    if dh is not None:
        dx = dx + h_pre.to(dt).unsqueeze(-1) * dh.to(dt).unsqueeze(-2)
    if gout is not None:
        dx = dx + torch.einsum("tji,tjc->tic", h_res.to(dt), gout.to(dt))
    dfn = G.t() @ xf
    m = dlogit * proj * inv_r
    dscale = torch.stack([m[:, :n].sum(), m[:, n:2 * n].sum(), m[:, 2 * n:].sum()])
    return dx.to(x.dtype), dfn, torch.cat([dscale, dlogit.sum(0)])


_COEF_IMPL = {"triton": (coef_forward_triton, coef_backward_triton),
              "torch": (coef_forward_torch, coef_backward_torch)}


# -- torch.library ops (``_library``): forward with autograd, backward as its own op ----------

def _forward_impl(x, fn, base, scale, iters, rms_eps, hc_eps):
    x = as_streams(x)
    return _COEF_IMPL[kernel_impl(x)][0](x, fn, base, scale, iters, rms_eps, hc_eps)


def _forward_fake(x, fn, base, scale, iters, rms_eps, hc_eps):
    T, n, _ = x.shape
    new = functools.partial(x.new_empty, dtype=compute_dtype(x))
    return new(T, n), new(T, n), new(T, n, n), new(T, (n + 2) * n + 1)


def _backward_impl(x, fn, base, scale, mix, d_pre, d_post, d_res, iters, hc_eps):
    x = as_streams(x)
    impl = kernel_impl(x)
    d_pre, d_post, d_res = (None if g is None else g.contiguous() for g in (d_pre, d_post, d_res))
    return _COEF_IMPL[impl][1](x, fn, base, scale, mix, d_pre, d_post, d_res, iters, hc_eps)


def coef_backward_fake(x, fn, base, scale, mix, *_):
    """Shapes of :func:`coef_backward_triton`'s ``(dx, dfn, d_gates)`` (the fake impl of
    every op whose arguments start like it)."""
    return x.new_empty(x.shape), mix.new_empty(fn.shape), mix.new_empty(3 + fn.shape[0])


def grads_of_parameters(dfn, d_gates, fn, base, scale):
    """``(dfn, dbase, dscale)`` in the parameters' dtypes from the backward's ``dfn`` and
    ``d_gates = [dscale (3), dbase (N)]``."""
    return dfn.to(fn.dtype), d_gates[3:].to(base.dtype), d_gates[:3].to(scale.dtype)


_coefficients_backward = FusedOp(
    "coefficients_backward", _backward_impl, coef_backward_fake,
    schema="(Tensor x, Tensor fn, Tensor base, Tensor scale, Tensor mix, Tensor? d_pre, "
           "Tensor? d_post, Tensor? d_res, int iters, float hc_eps) "
           "-> (Tensor, Tensor, Tensor)")


def _setup(ctx, inputs, output):
    x, fn, base, scale, iters, _, hc_eps = inputs
    ctx.save_for_backward(x, fn, base, scale, output[3])
    ctx.cfg = (iters, hc_eps)
    ctx.set_materialize_grads(False)  # unused mappings get None, not zero tensors


def _backward(ctx, d_pre, d_post, d_res, _d_mix):
    x, fn, base, scale, mix = ctx.saved_tensors
    dx, dfn, d_gates = _coefficients_backward(x, fn, base, scale, mix, d_pre, d_post, d_res,
                                              *ctx.cfg)
    return (dx, *grads_of_parameters(dfn, d_gates, fn, base, scale), None, None, None)


#: ``torch.ops.torch_mhc.coefficients(x (T, n, C), fn, base, scale, iters, rms_eps, hc_eps)
#: -> (H_pre, H_post, H_res, mix)``; saves ``x`` and ``mix`` ((n+2)n + 1 floats per token):
#: the Sinkhorn iterations are recomputed inside the backward.
coefficients_op = FusedOp(
    "coefficients", _forward_impl, _forward_fake, _setup, _backward,
    schema="(Tensor x, Tensor fn, Tensor base, Tensor scale, int iters, float rms_eps, "
           "float hc_eps) -> (Tensor, Tensor, Tensor, Tensor)")


def mhc_coefficients(x: torch.Tensor, fn: torch.Tensor, base: torch.Tensor,
                     scale: torch.Tensor, iters: int = 20, rms_eps: float = 1e-20,
                     hc_eps: float = 0.0, backend: str = "auto") -> Coefficients:
    """``H_pre, H_post, H_res`` (float32) for streams ``x (..., n, C)``; dispatches on ``backend``.

    ``backend="triton"`` runs the fused kernels (module header) as the custom op
    ``torch.ops.torch_mhc.coefficients``, whose backward keeps only ``x`` and ``(n+2)n + 1``
    floats per token; ``"torch"`` the reference; ``"auto"`` Triton on CUDA when installed.
    float64 inputs use the PyTorch twin of the kernels' decomposition (same op, exact
    float64 math).
    """
    if resolve_backend(backend, x) == "triton":
        lead, (n, C) = x.shape[:-2], x.shape[-2:]
        h_pre, h_post, h_res, _ = coefficients_op(x.reshape(-1, n, C), fn, base, scale,
                                                  int(iters), float(rms_eps), float(hc_eps))
        return (h_pre.view(*lead, n), h_post.view(*lead, n), h_res.view(*lead, n, n))
    return mhc_coefficients_reference(x, fn, base, scale, iters, rms_eps, hc_eps)
