"""Compile every fused kernel for Hopper (sm_90) on a machine without a GPU and print the
registers, spills and shared memory of each configuration the launchers use at n = 4,
C = 4096 (costs no device time; uses the ptxas/cuobjdump bundled with Triton).

    python benchmarks/compile_sm90.py [--n 4] [--C 4096] [--dtype bf16]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--C", type=int, default=4096)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    args = ap.parse_args(argv)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    import importlib
    co = importlib.import_module("torch_mhc.ops.coefficients")
    po = importlib.import_module("torch_mhc.ops.post_res")
    pm = importlib.import_module("torch_mhc.ops.pre_mix")
    from torch_mhc.ops._backend import next_pow2

    n, C = args.n, args.C
    N, NB = (n + 2) * n, next_pow2(n)
    NP = max(16, next_pow2(N))
    xt = "*bf16" if args.dtype == "bf16" else "*fp32"
    prec = 2 if args.dtype == "bf16" else 1
    f32, i32 = "*fp32", "i32"
    bc_fwd = max(16, min(next_pow2(C), 16384 // NB))
    bc_bwd = max(16, min(next_pow2(C), 8192 // NB))
    bc_pr = max(16, min(next_pow2(C), 4096 // NB))
    bc_x = max(16, min(next_pow2(C), 8192 // (NB * NP)))
    if args.dtype == "fp32":
        bc_x = max(16, bc_x // 2)
    dx4_sig = dict(x_ptr=xt, fn_ptr=f32, g_ptr=f32, dss_ptr=f32, dx_ptr=xt, dfn_ptr=f32,
                   hpre_ptr=f32, dh_ptr=xt, hres_ptr=f32, gout_ptr=xt, T=i32, C=i32, K=i32,
                   tiles_per=i32, tsplit=i32)
    cases = [
        ("coef_gemm", co._coef_gemm, dict(x_ptr=xt, fn_ptr=f32, part_ptr=f32, T=i32, K=i32,
                                            C=i32, k_per_split=i32, split=i32),
         dict(N=N, NP=NP, BT=128 if (prec == 2 and NP < 64) else (64 if NP < 64 else 32),
              BK=128 if (prec == 2 and NP < 64) else 32, PREC=prec, XB=False),
         8 if (prec == 2 and NP < 64) else 4, 3),
        ("coef_token", co._coef_token, dict(part_ptr=f32, scale_ptr=f32, base_ptr=f32, mix_ptr=f32,
                                              hpre_ptr=f32, hpost_ptr=f32, hres_ptr=f32, T=i32,
                                              SPLIT=i32, K=i32, iters=i32, rms_eps="fp32",
                                              hc_eps="fp32"),
         dict(n=n, N=N, NB=NB, BT=32 if NB <= 4 else 8, LOG=True), 4, 1),
        ("coef_token_bwd", co._coef_token_bwd,
         dict(mix_ptr=f32, scale_ptr=f32, base_ptr=f32, dpre_ptr=f32, dpost_ptr=f32, dres_ptr=f32,
              g_ptr=f32, dss_ptr=f32, red_ptr=f32, scr_ptr=f32, T=i32, K=i32,
              iters=i32, hc_eps="fp32", st_pre=i32, st_post=i32, st_res=i32, n_part=i32, st_part=i32),
         dict(n=n, N=N, NB=NB, NN=NB * NB, NP=NP, BT=16 if NB <= 4 else 4, LOG=True, HAS_DPRE=True,
              HAS_DPOST=True, HAS_DRES=True), 4, 1),
        ("coef_token_bwd(V4)", co._coef_token_bwd,
         dict(mix_ptr=f32, scale_ptr=f32, base_ptr=f32, dpre_ptr=f32, dpost_ptr=f32, dres_ptr=f32,
              g_ptr=f32, dss_ptr=f32, red_ptr=f32, scr_ptr=f32, T=i32, K=i32,
              iters=i32, hc_eps="fp32", st_pre=i32, st_post=i32, st_res=i32, n_part=i32, st_part=i32),
         dict(n=n, N=N, NB=NB, NN=NB * NB, NP=NP, BT=16 if NB <= 4 else 4, LOG=False,
              HAS_DPRE=True, HAS_DPOST=False, HAS_DRES=True), 4, 1),
        ("coef_token(V4)", co._coef_token, dict(part_ptr=f32, scale_ptr=f32, base_ptr=f32, mix_ptr=f32,
                                                  hpre_ptr=f32, hpost_ptr=f32, hres_ptr=f32, T=i32,
                                                  SPLIT=i32, K=i32, iters=i32, rms_eps="fp32",
                                                  hc_eps="fp32"),
         dict(n=n, N=N, NB=NB, BT=32 if NB <= 4 else 8, LOG=False), 4, 1),
        ("coef_dx", co._coef_bwd_x,
         dict(x_ptr=xt, fn_ptr=f32, g_ptr=f32, dss_ptr=f32, dx_ptr=xt, dfn_ptr=f32, hpre_ptr=f32,
              dh_ptr=xt, hres_ptr=f32, gout_ptr=xt, T=i32, C=i32, K=i32, t_per_split=i32),
         dict(n=n, N=N, NB=NB, NP=NP, BT=64 if prec == 2 else 32, BC=32, QB=NB * 32,
              PREC=prec, HAS_PRE=True, HAS_RES=True, DFN=False, LS=3), 4, 2),
        # the dx pass as launched (gtl, SP = n), the transposed-in-registers G^T it replaced,
        # and the launch variants with fewer streams per program
        *[(f"coef_dx4(dfn{label})", co._coef_dx4, dx4_sig,
           dict(n=n, N=N, NP=NP, BT=32, BC=64, PREC=prec, HAS_PRE=True, HAS_RES=True, DFN=True,
                LS=2, DXP=1, DFP=2, XB=False, GB=False, GTL=gtl, SP=sp), 4, 2)
          for label, gtl, sp in ((",gtl", True, n), ("", False, n), (",gtl,sp2", True, 2),
                                 (",gtl,sp1", True, 1)) if n % sp == 0],
        ("coef_dx4(broadcast)", co._coef_dx4, dx4_sig,
         dict(n=n, N=N, NP=NP, BT=64, BC=32, PREC=prec, HAS_PRE=True, HAS_RES=True, DFN=False, LS=2,
              DXP=3, DFP=2, XB=True, GB=True, GTL=True, SP=n), 4, 2),
        ("coef_dfn", co._coef_dfn, dict(x_ptr=xt, g_ptr=f32, dfn_ptr=f32, T=i32, K=i32,
                                          t_per_split=i32),
         dict(N=N, NP=NP, BT=64, BK=32, PREC=prec), 2, 4),
        ("coef_bwd_x(fused)", co._coef_bwd_x,
         dict(x_ptr=xt, fn_ptr=f32, g_ptr=f32, dss_ptr=f32, dx_ptr=xt, dfn_ptr=f32, hpre_ptr=f32,
              dh_ptr=xt, hres_ptr=f32, gout_ptr=xt, T=i32, C=i32, K=i32, t_per_split=i32),
         dict(n=n, N=N, NB=NB, NP=NP, BT=16, BC=bc_x, QB=NB * bc_x, PREC=prec, HAS_PRE=True, HAS_RES=True,
              DFN=True, LS=1),
         8 if NP * NB * bc_x >= 4096 else 4, 2),
        ("pre_mix_fwd", pm._pre_mix_fwd, dict(x_ptr=xt, hpre_ptr=f32, h_ptr=xt, T=i32, C=i32),
         dict(n=n, NB=NB, BT=1, BC=bc_fwd, XB=False), 4 if NB * bc_fwd <= 2048 else 8, 1),
        ("pre_mix_bwd", pm._pre_mix_bwd, dict(x_ptr=xt, hpre_ptr=f32, dh_ptr=xt, dx_ptr=xt,
                                               dhpre_ptr=f32, T=i32, C=i32),
         dict(n=n, NB=NB, BT=1, BC=bc_bwd, WRITE_DX=False, XB=False), 4 if NB * bc_bwd <= 1024 else 8, 1),
        ("post_res_fwd", po._post_res_fwd, dict(x_ptr=xt, y_ptr=xt, hpost_ptr=f32, hres_ptr=f32,
                                                 out_ptr=xt, T=i32, C=i32),
         dict(n=n, NB=NB, BT=1, BC=bc_fwd, XB=True), 4 if NB * bc_fwd <= 2048 else 8, 1),
        ("post_res_bwd", po._post_res_bwd,
         dict(x_ptr=xt, y_ptr=xt, hpost_ptr=f32, hres_ptr=f32, g_ptr=xt, dx_ptr=xt, dy_ptr=xt,
              part_ptr=f32, T=i32, C=i32),
         dict(n=n, NB=NB, BT=1, BC=bc_pr, WRITE_DX=False, XB=False, GB=True), 4, 1),
        ("post_res_bwd(dx)", po._post_res_bwd,
         dict(x_ptr=xt, y_ptr=xt, hpost_ptr=f32, hres_ptr=f32, g_ptr=xt, dx_ptr=xt, dy_ptr=xt,
              part_ptr=f32, T=i32, C=i32),
         dict(n=n, NB=NB, BT=1, BC=bc_pr, WRITE_DX=True, XB=True, GB=False), 4, 1),
    ]
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    ok = True
    for name, lazy, sig, const, warps, stages in cases:
        fn = lazy.jit(interpret=False)
        # what a real launch specialises on: 16-byte aligned pointers, sizes divisible by 16
        attrs = {(fn.arg_names.index(k),): [["tt.divisibility", 16]] for k, v in sig.items()
                 if v.startswith("*") or k in ("C", "K", "k_per_split", "t_per_split")}
        try:
            full = {k: sig.get(k, "constexpr") for k in fn.arg_names}  # Triton 3.3 wants all
            c = triton.compile(ASTSource(fn=fn, signature=full, constexprs=const, attrs=attrs),
                               target=GPUTarget("cuda", 90, 32),
                               options=dict(num_warps=warps, num_stages=stages))
        except Exception as e:  # noqa: BLE001
            ok = False
            print(f"{name:20s} FAILED: {str(e)[:2000]}")
            continue
        with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
            f.write(c.asm["cubin"])
        res = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
        os.unlink(f.name)
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", res)
        ptx = c.asm["ptx"]
        mma = f"wgmma:{ptx.count('wgmma.mma_async')} mma:{ptx.count('mma.sync')}"
        print(f"{name:20s} warps={warps} {m.group(0) if m else res.strip()[:200]} {mma} "
              f"const={const}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
