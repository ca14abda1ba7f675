"""Backward of the fused coefficients, per token (the paper's kernel 3), then the pass over x.

``_coef_token_bwd_kernel`` recomputes the logits and the Sinkhorn iterations from the saved
projection and runs them backwards, with what it needs of each step in a transient
per-token scratch that the same program writes and reads back (then freed): in the log
domain each half step's n log-normalisers, from which it walks the iterates back from the
last one (2 iters n floats a token); in DeepSeek-V4's form each step's input matrix
(2 iters n^2). Then dL for the (n+2)n logits -> G = dmix (T, NP), d(sum x^2), partial
dscale / dbase. ``backward_x`` then writes dx and dfn from G in one pass over x.

Gradient formulas (mix = x fn^T, inv_r = (sum x^2 / K + eps)^-1/2, logit = a mix inv_r + b):

    G      = dlogit * a * inv_r                       (d mix)
    dinv_r = sum_o dlogit_o a_o mix_o,  d(sum x^2) = -dinv_r inv_r^3 / (2K)
    dx     = G fn + 2 x d(sum x^2),  dfn = G^T x,  da = sum dlogit mix inv_r,  db = sum dlogit
"""
from __future__ import annotations

import torch

from .._launch import LazyJit, Launch, fit_channel_tile, next_pow2, triton_cdiv
from .._tiles import _gates, _token_tile
from ..pre_mix import pre_mix_backward_triton
from ..tuning import launch_plan, stream_shape
from .backward_x import dx_and_dfn_triton

def _coef_token_bwd_kernel(mix_ptr, scale_ptr, base_ptr, dpre_ptr, dpost_ptr, dres_ptr,
                           x_ptr, dh_ptr, g_ptr, dss_ptr, red_ptr, scr_ptr,
                           T, C, K, iters, hc_eps, st_pre, st_post, st_res,
                           n: tl.constexpr, N: tl.constexpr, NB: tl.constexpr, NN: tl.constexpr,
                           NP: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
                           LOG: tl.constexpr, HAS_DPRE: tl.constexpr, HAS_DPOST: tl.constexpr,
                           HAS_DRES: tl.constexpr, HAS_DH: tl.constexpr,
                           X_BROADCAST: tl.constexpr, PIPELINE_STAGES: tl.constexpr,
                           PHASE_SPLIT: tl.constexpr):
    hc_eps = tl.cast(hc_eps, tl.float32)  # (float64 when Inductor launches the kernel)
    # token tiles descending: the dx pass that follows starts from the low tokens' x and dh,
    # which this kernel read last (still in L2, see ``_launch``)
    pid = tl.cdiv(T, BT) - 1 - tl.program_id(0)
    rows, rmask, r64, ii, m2, aa, bb, valid, m3 = _token_tile(pid, T, n, NB, BT)
    mrow = mix_ptr + r64 * (N + 1)
    pre = tl.load(mrow[:, None] + ii[None, :], mask=m2, other=0.0)
    post = tl.load(mrow[:, None] + n + ii[None, :], mask=m2, other=0.0)
    comb = tl.load(mrow[:, None, None] + 2 * n + aa * n + bb, mask=m3, other=0.0)
    inv_r = tl.load(mrow + N, mask=rmask, other=0.0)
    a_pre, a_post, a_res, b_pre, b_post, b_res = _gates(scale_ptr, base_ptr, ii, aa, bb, valid, n)
    # pre / post: d sigmoid = s (1 - s)
    s_pre = tl.sigmoid(a_pre * pre * inv_r[:, None] + b_pre[None, :])
    s_post = tl.sigmoid(a_post * post * inv_r[:, None] + b_post[None, :])
    if HAS_DPRE:
        d_pre = tl.load(dpre_ptr + r64[:, None] * st_pre + ii[None, :], mask=m2, other=0.0).to(tl.float32)
    else:
        d_pre = tl.zeros([BT, NB], dtype=tl.float32)
    if HAS_DPOST:  # (loaded before the scratch's stores: a load after them would wait)
        d_post = tl.load(dpost_ptr + r64[:, None] * st_post + ii[None, :], mask=m2,
                         other=0.0).to(tl.float32)
    else:
        d_post = tl.zeros([BT, NB], dtype=tl.float32)
    # PHASE_SPLIT: odd programs run the Sinkhorn backward before streaming dh and x, so that
    # some programs stream while others compute (all programs are resident at once)
    dh_late = False
    if PHASE_SPLIT:
        dh_late = (pid % 2) == 1
    if HAS_DH:  # the pre-mix backward (h = H_pre x, Eq. 3): dH_pre[t, i] += <dh[t], x[t, i]>
        if not dh_late:
            d_pre += _dh_dot_x(dh_ptr, x_ptr, r64, rmask, m2, ii, C, K, BT, NB, BC,
                               X_BROADCAST, PIPELINE_STAGES)
    # Sinkhorn: re-run the iterations from the logits, keeping in the per-token scratch what
    # the backward needs of each step, then differentiate the steps in reverse order.
    L = a_res * comb * inv_r[:, None, None] + b_res
    L = tl.where(valid, L, -1.0e30)
    scr = scr_ptr + r64[:, None, None] * (2 * iters * NN) + aa * NB + bb
    if HAS_DRES:
        # d H_res, transposed to comb's layout
        g_res = tl.load(dres_ptr + r64[:, None, None] * st_res + bb * n + aa, mask=m3,
                        other=0.0).to(tl.float32)
        if LOG:
            # keep only each half step's log-normaliser (n floats, not n^2): step
            # L_out = L_in - lse(L_in) inverts as L_in = L_out + lse, and the step's softmax of
            # its input is exp(L_out), so the backward walks the iterates back from the last
            scr1 = scr_ptr + r64[:, None] * (2 * iters * NB) + ii[None, :]
            for k in range(iters):
                mx = tl.max(L, axis=2)
                lse = mx + tl.log(tl.sum(tl.exp(L - mx[:, :, None]), axis=2))  # per comb row
                tl.store(scr1 + (2 * k) * NB, lse, mask=m2)
                L = tl.where(valid, L - lse[:, :, None], -1.0e30)
                mx = tl.max(L, axis=1)
                lse = mx + tl.log(tl.sum(tl.exp(L - mx[:, None, :]), axis=1))  # per comb column
                tl.store(scr1 + (2 * k + 1) * NB, lse, mask=m2)
                L = tl.where(valid, L - lse[:, None, :], -1.0e30)
            P = tl.exp(L)
            gy = g_res * P
            tl.debug_barrier()
            for kk in range(iters):
                k = iters - 1 - kk
                # column step: dLin = dy - exp(L_out) * sum(dy) along axis 1
                gy = tl.where(valid, gy - tl.exp(L) * tl.sum(gy, axis=1)[:, None, :], 0.0)
                lse = tl.load(scr1 + (2 * k + 1) * NB, mask=m2, other=0.0)
                L = tl.where(valid, L + lse[:, None, :], -1.0e30)
                # row step, the same along axis 2
                gy = tl.where(valid, gy - tl.exp(L) * tl.sum(gy, axis=2)[:, :, None], 0.0)
                lse = tl.load(scr1 + (2 * k) * NB, mask=m2, other=0.0)
                L = tl.where(valid, L + lse[:, :, None], -1.0e30)
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
    if HAS_DH:
        if dh_late:
            d_pre += _dh_dot_x(dh_ptr, x_ptr, r64, rmask, m2, ii, C, K, BT, NB, BC,
                               X_BROADCAST, PIPELINE_STAGES)
    d_pre = d_pre * s_pre * (1.0 - s_pre)
    d_post = 2.0 * d_post * s_post * (1.0 - s_post)
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

def _dh_dot_x(dh_ptr, x_ptr, r64, rmask, m2, ii, C, K, BT: tl.constexpr, NB: tl.constexpr,
              BC: tl.constexpr, X_BROADCAST: tl.constexpr, PIPELINE_STAGES: tl.constexpr):
    """``<dh[t], x[t, i]>`` [BT, NB] for one tile of tokens, over the channels in tiles of
    ``BC`` (zero in padded streams)."""
    acc = tl.zeros([BT, NB, BC], dtype=tl.float32)
    for c0 in tl.range(0, C, BC, num_stages=PIPELINE_STAGES):
        cc = c0 + tl.arange(0, BC)
        mc = rmask[:, None] & (cc < C)[None, :]
        dh = tl.load(dh_ptr + r64[:, None] * C + cc[None, :], mask=mc, other=0.0)
        if X_BROADCAST:  # x a broadcast (T, C) view: the same row for every stream
            xv = tl.load(x_ptr + r64[:, None] * C + cc[None, :], mask=mc, other=0.0)
            acc += (xv.to(tl.float32) * dh.to(tl.float32))[:, None, :]
        else:
            xv = tl.load(x_ptr + r64[:, None, None] * K + ii[None, :, None] * C
                         + cc[None, None, :], mask=m2[:, :, None] & (cc < C)[None, None, :],
                         other=0.0)
            acc += xv.to(tl.float32) * dh.to(tl.float32)[:, None, :]
    return tl.where(m2, tl.sum(acc, axis=2), 0.0)


_coef_token_bwd = LazyJit(_coef_token_bwd_kernel, helpers=(_token_tile, _gates, _dh_dot_x))


def _rows(t, inner: int):
    """``(t, token stride)`` for a per-token gradient ``t (..., *inner dims)`` as the token
    backward kernel reads it: contiguous rows at one stride over all leading dimensions
    (views of the post-res backward's ``d_map`` are), else a contiguous copy; ``(None, 0)``
    for ``None``."""
    if t is None:
        return None, 0
    lead = t.dim() - inner
    ok = t.stride(-1) == 1 and (inner == 1 or t.stride(-2) == t.shape[-1])
    for i in range(lead - 1):  # the leading dimensions flatten to one token stride
        ok = ok and (t.shape[i] == 1 or t.stride(i) == t.stride(i + 1) * t.shape[i + 1])
    if not ok:
        t = t.contiguous()
    return t, (t.stride(lead - 1) if lead else 0)


def _token_plan(cfg, T, n, C, broadcast, interpret, log, has, **_):
    BT = 8 if interpret else cfg["BT"]
    NB = next_pow2(n)
    return triton_cdiv(T, BT), Launch(
        _coef_token_bwd, (triton_cdiv(T, BT),), interpret, n=n, N=(n + 2) * n, NB=NB, NN=NB * NB,
        NP=max(16, next_pow2((n + 2) * n)), BT=BT, BC=fit_channel_tile(cfg["BC"], C), LOG=log,
        HAS_DPRE=has[0], HAS_DPOST=has[1], HAS_DRES=has[2], HAS_DH=has[3] and cfg["pre_mix"],
        X_BROADCAST=broadcast, PIPELINE_STAGES=cfg.get("pipeline_stages", 1),
        PHASE_SPLIT=bool(cfg.get("phase_split", False)), num_warps=cfg["num_warps"])


def token_backward_triton(x, mix, scale, base, d_pre, d_post, d_res, iters, hc_eps, shape=None,
                          dh=None):
    """Kernel 3: ``(G (T, NP), dss (T,), red)`` from the gradients of the mappings, ``red
    (programs, 3 + N)`` the per-program partial sums of ``d_gates = [dscale (3), dbase (N)]``
    (summed with dfn's partials after the dx pass, ``backward_x._grad_sums``). With ``dh``
    (the gradient of the pre-mix output ``h = H_pre x``, ``(..., C)`` contiguous) the
    gradient of ``H_pre`` also gets the pre-mix's share, ``<dh, x_i>``: read by this kernel
    (launch option ``pre_mix``) or by the pre-mix backward kernel first; without, ``x`` only
    gives the launch shape."""
    shape = shape or stream_shape(x)
    T, n, C = shape["T"], shape["n"], shape["C"]
    (d_pre, s_pre), (d_post, s_post), (d_res, s_res) = (
        _rows(d_pre, 1), _rows(d_post, 1), _rows(d_res, 2))
    has = (d_pre is not None, d_post is not None, d_res is not None, dh is not None)
    nprog, launch = launch_plan("coef_token_bwd", _token_plan, log=(hc_eps == 0.0), has=has,
                                **shape)
    if has[3] and not launch.kw["HAS_DH"]:  # the pre-mix kernel's dH_pre (it reads no H_pre)
        d_pre_h = pre_mix_backward_triton(x, mix, dh, False, shape)[1]
        d_pre, s_pre = _rows(d_pre_h if d_pre is None else d_pre + d_pre_h.view(d_pre.shape), 1)
        has = (True, has[1], has[2], False)
        nprog, launch = launch_plan("coef_token_bwd", _token_plan, log=(hc_eps == 0.0), has=has,
                                    **shape)
    K, N, NP, NB = n * C, (n + 2) * n, launch.kw["NP"], launch.kw["NB"]
    dev, f32 = x.device, torch.float32
    G, dss = torch.empty(T, NP, device=dev, dtype=f32), torch.empty(T, device=dev, dtype=f32)
    red = torch.empty(nprog, 3 + N, device=dev, dtype=f32)
    per_step = NB if launch.kw["LOG"] else NB * NB  # floats kept per half step
    scr = torch.empty(T * 2 * int(iters) * per_step if has[2] else 1, device=dev, dtype=f32)
    launch(mix, scale.contiguous(), base.contiguous(), d_pre if has[0] else mix,
           d_post if has[1] else mix, d_res if has[2] else mix, x, dh if has[3] else mix, G, dss,
           red, scr, T, C, K, int(iters), float(hc_eps), s_pre, s_post, s_res)
    return G, dss, red


def coef_backward_triton(x, fn, base, scale, mix, d_pre, d_post, d_res, iters, hc_eps,
                         h_pre=None, dh=None, h_res=None, gout=None, shape=None):
    """Kernels 3-4: gradients to ``x, fn, base, scale`` from those of ``H_pre, H_post, H_res``:
    ``(dx, dfn, d_gates)``.

    With ``h_pre, dh`` (pre-mix) and ``h_res, gout`` (post-res) given, ``dx`` also holds
    ``H_pre_i dh`` and ``sum_j H_res[j, i] gout_j``: the whole connection's ``dx`` in one pass;
    with ``dh`` the gradient of ``H_pre`` also holds the pre-mix's ``<dh, x_i>`` (the token
    kernel reads ``x`` and ``dh`` for it). ``x`` may have leading dimensions (``shape``:
    ``tuning.stream_shape(x)`` where the caller has it).
    """
    shape = shape or stream_shape(x)
    G, dss, red = token_backward_triton(x, mix, scale, base, d_pre, d_post, d_res, iters,
                                        hc_eps, shape, dh)
    return dx_and_dfn_triton(x, fn, G, dss, red, h_pre, dh, h_res, gout, shape)
