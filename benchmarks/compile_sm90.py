"""Compile every fused kernel for Hopper (sm_90) on a machine without a GPU and print the
registers, spills and shared memory of each configuration the launchers use at n = 4,
C = 4096 (costs no device time; uses the ptxas/cuobjdump bundled with Triton).

    python benchmarks/compile_sm90.py [--n 4] [--C 4096] [--dtype bf16]
"""
from __future__ import annotations

import argparse
import itertools
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
    ap.add_argument("--order", action="store_true",
                    help="also print each kernel's global loads (L), stores (S) and barriers "
                         "(B) in PTX order: a load after a store waits for the work before it")
    args = ap.parse_args(argv)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    import importlib
    co = importlib.import_module("torch_mhc.ops.coefficients")
    po = importlib.import_module("torch_mhc.ops.post_res")
    pm = importlib.import_module("torch_mhc.ops.pre_mix")
    from torch_mhc.ops._launch import fit_channel_tile, next_pow2
    from torch_mhc.ops.tuning import launch_config

    n, C = args.n, args.C
    N, NB = (n + 2) * n, next_pow2(n)
    NP = max(16, next_pow2(N))
    xt = "*bf16" if args.dtype == "bf16" else "*fp32"
    prec = 2 if args.dtype == "bf16" else 1
    f32, i32 = "*fp32", "i32"
    shape = dict(T=4096, n=n, C=C, dtype_bytes=2 if args.dtype == "bf16" else 4)

    def cfg(key):  # the launch configuration the launcher uses at this shape
        c = dict(launch_config(key, **shape))
        if "BC" in c:
            c["BC"] = fit_channel_tile(c["BC"], C)
        return c

    def launch(key, **const):  # (constexprs, num_warps, num_stages) as the launcher passes them
        c = cfg(key)
        tiles = {k: c[k] for k in ("BT", "BC", "BK") if k in c}
        if "pipeline_stages" in c or key.startswith("coef_token"):  # token kernels: 1 if unset
            tiles["PIPELINE_STAGES"] = c.get("pipeline_stages", 1)
        if key.startswith("coef_token"):  # odd programs: Sinkhorn first (``phase_split``)
            tiles["PHASE_SPLIT"] = bool(c.get("phase_split", False))
        return {**tiles, **const}, c["num_warps"], c.get("num_stages")  # None: Triton's default

    token_sig = dict(part_ptr=f32, scale_ptr=f32, base_ptr=f32, mix_ptr=f32, hpre_ptr=f32,
                     hpost_ptr=f32, hres_ptr=f32, T=i32, SPLIT=i32, K=i32, iters=i32,
                     rms_eps="fp32", hc_eps="fp32")
    token_bwd_sig = dict(mix_ptr=f32, scale_ptr=f32, base_ptr=f32, dpre_ptr=f32, dpost_ptr=f32,
                         dres_ptr=f32, g_ptr=f32, dss_ptr=f32, red_ptr=f32, scr_ptr=f32, T=i32,
                         K=i32, iters=i32, hc_eps="fp32", st_pre=i32, st_post=i32, st_res=i32)
    dx4_sig = dict(x_ptr=xt, fn_ptr=f32, g_ptr=f32, dss_ptr=f32, dx_ptr=xt, dfn_ptr=f32,
                   hpre_ptr=f32, dh_ptr=xt, hres_ptr=f32, gout_ptr=xt, T=i32, C=i32, K=i32,
                   tiles_per=i32, tsplit=i32)
    dx_sig = dict(x_ptr=xt, fn_ptr=f32, g_ptr=f32, dss_ptr=f32, dx_ptr=xt, hpre_ptr=f32,
                  dh_ptr=xt, hres_ptr=f32, gout_ptr=xt, T=i32, C=i32, K=i32, t_per_split=i32)
    post_bwd_sig = dict(x_ptr=xt, y_ptr=xt, hpost_ptr=f32, hres_ptr=f32, g_ptr=xt, dx_ptr=xt,
                        dy_ptr=xt, part_ptr=f32, T=i32, C=i32)
    bc_dx = cfg("coef_dx")["BC"]
    cases = [
        ("coef_gemm", co._coef_gemm, dict(x_ptr=xt, fn_ptr=f32, part_ptr=f32, T=i32, K=i32,
                                            C=i32, k_per_split=i32, split=i32),
         *launch("coef_gemm", N=N, NP=NP, PREC=prec, X_BROADCAST=False)),
        ("coef_token", co._coef_token, token_sig, *launch("coef_token", n=n, N=N, NB=NB, LOG=True)),
        # with the connection's pre-mix (``pre_mix``): the channel loop over x
        ("coef_token(pre-mix)", co._coef_token, dict(token_sig, x_ptr=xt, h_ptr=xt, C=i32),
         *launch("coef_token", n=n, N=N, NB=NB, LOG=True, PRE_MIX=True, X_BROADCAST=False)),
        ("coef_token(pre-mix, phases split)", co._coef_token, dict(token_sig, x_ptr=xt, h_ptr=xt,
                                                                   C=i32),
         *launch("coef_token", n=n, N=N, NB=NB, LOG=True, PRE_MIX=True, X_BROADCAST=False,
                 PHASE_SPLIT=True)),
        ("coef_token(V4)", co._coef_token, token_sig,
         *launch("coef_token", n=n, N=N, NB=NB, LOG=False)),
        ("coef_token_bwd", co._coef_token_bwd, token_bwd_sig,
         *launch("coef_token_bwd", n=n, N=N, NB=NB, NN=NB * NB, NP=NP, LOG=True, HAS_DPRE=True,
                 HAS_DPOST=True, HAS_DRES=True)),
        ("coef_token_bwd(pre-mix)", co._coef_token_bwd,
         dict(token_bwd_sig, x_ptr=xt, dh_ptr=xt, C=i32),
         *launch("coef_token_bwd", n=n, N=N, NB=NB, NN=NB * NB, NP=NP, LOG=True, HAS_DPRE=True,
                 HAS_DPOST=True, HAS_DRES=True, HAS_DH=True, X_BROADCAST=False)),
        ("coef_token_bwd(pre-mix, phases split)", co._coef_token_bwd,
         dict(token_bwd_sig, x_ptr=xt, dh_ptr=xt, C=i32),
         *launch("coef_token_bwd", n=n, N=N, NB=NB, NN=NB * NB, NP=NP, LOG=True, HAS_DPRE=True,
                 HAS_DPOST=True, HAS_DRES=True, HAS_DH=True, X_BROADCAST=False,
                 PHASE_SPLIT=True)),
        ("coef_token_bwd(V4)", co._coef_token_bwd, token_bwd_sig,
         *launch("coef_token_bwd", n=n, N=N, NB=NB, NN=NB * NB, NP=NP, LOG=False,
                 HAS_DPRE=True, HAS_DPOST=False, HAS_DRES=True)),
        # the dx pass of bf16 streams with n <= 4, dense and broadcast inputs
        *[(f"coef_dx4{label}", co._coef_dx4, dx4_sig,
           *launch("coef_dx4", n=n, N=N, NP=NP, PREC=prec, HAS_PRE=True, HAS_RES=True,
                   X_BROADCAST=bcast, G_BROADCAST=bcast))
          for label, bcast in (("", False), ("(broadcast)", True))
          if args.dtype == "bf16" and n <= 4],
        # the general dx pass and dfn GEMM (float32 / float16 streams, n > 4)
        ("coef_dx", co._coef_bwd_x, dx_sig,
         *launch("coef_dx", n=n, N=N, NB=NB, NP=NP, QB=NB * bc_dx, PREC=prec, HAS_PRE=True,
                 HAS_RES=True)),
        ("coef_dfn", co._coef_dfn, dict(x_ptr=xt, g_ptr=f32, dfn_ptr=f32, T=i32, K=i32,
                                          t_per_split=i32),
         *launch("coef_dfn", N=N, NP=NP, PREC=prec)),
        ("pre_mix_fwd", pm._pre_mix_fwd, dict(x_ptr=xt, hpre_ptr=f32, h_ptr=xt, T=i32, C=i32),
         *launch("pre_mix_fwd", n=n, NB=NB, X_BROADCAST=False)),
        ("pre_mix_bwd", pm._pre_mix_bwd, dict(x_ptr=xt, hpre_ptr=f32, dh_ptr=xt, dx_ptr=xt,
                                               dhpre_ptr=f32, T=i32, C=i32),
         *launch("pre_mix_bwd", n=n, NB=NB, WRITE_DX=False, X_BROADCAST=False)),
        ("post_res_fwd", po._post_res_fwd, dict(x_ptr=xt, y_ptr=xt, hpost_ptr=f32, hres_ptr=f32,
                                                 out_ptr=xt, T=i32, C=i32),
         *launch("post_res_fwd", n=n, NB=NB, X_BROADCAST=False)),
        ("post_res_bwd", po._post_res_bwd, post_bwd_sig,
         *launch("post_res_bwd", n=n, NB=NB, WRITE_DX=False, X_BROADCAST=False,
                 G_BROADCAST=False)),
        ("post_res_bwd(dx)", po._post_res_bwd, post_bwd_sig,
         *launch("post_res_bwd", n=n, NB=NB, WRITE_DX=True, X_BROADCAST=True,
                 G_BROADCAST=False)),
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
                               options=dict(num_warps=warps, **({} if stages is None
                                                                 else {"num_stages": stages})))
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
        if args.order:
            print(f"{'':20s} order: {_memory_order(ptx)}")
    return 0 if ok else 1


def _memory_order(ptx: str) -> str:
    """Global loads, stores and barriers of ``ptx`` in order, runs counted: ``L6 S1 B3 ...``."""
    seq = []
    for line in ptx.splitlines():
        words = line.split()
        op = words[1] if len(words) > 1 and words[0].startswith("@") else (words or [""])[0]
        kind = ("L" if op.startswith(("ld.global", "cp.async")) else
                "S" if op.startswith("st.global") else "B" if op.startswith("bar.sync") else None)
        if kind:
            seq.append(kind)
    return " ".join(f"{k}{len(list(run))}" for k, run in itertools.groupby(seq))


if __name__ == "__main__":
    sys.exit(main())
