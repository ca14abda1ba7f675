"""Time a few launch configurations of every fused kernel at the `layer` shape (T = 4096,
C = 4096, n = 4, bf16) and write the fastest of each as a TUNING JSON
(``TORCH_MHC_TUNING=<file>`` makes the launchers use it; the built-in configurations are
``torch_mhc.ops.tuning.LAUNCH_DEFAULTS``). The general dx pass and dfn GEMM (``coef_dx``,
``coef_dfn``), which bf16 streams at n = 4 do not use, are timed on float16 streams.

    PYTHONPATH=src python benchmarks/sweep.py --out tuning.json [--tokens 4096 --C 4096]
"""
from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys

import torch


def _token_configs(*rows):
    """Configurations of a token kernel from ``(BT, BC, num_warps, pre_mix)`` rows."""
    return [dict(BT=bt, BC=bc, num_warps=w, pre_mix=p) for bt, bc, w, p in rows]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tuning.json")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--C", type=int, default=4096)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--only", default=None, help="comma list of tuning keys to sweep (default all)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="time every configuration of a key this many times, interleaved "
                         "(configuration order rotated each round), and keep the median")
    ap.add_argument("--configs", default=None,
                    help="KEY=JSON list of configurations: replaces that key's list")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error(f"--rounds must be >= 1, got {args.rounds}")
    from triton.testing import do_bench

    from torch_mhc.ops.tuning import TUNING
    co = importlib.import_module("torch_mhc.ops.coefficients")
    pm = importlib.import_module("torch_mhc.ops.pre_mix")
    po = importlib.import_module("torch_mhc.ops.post_res")
    dev = "cuda"
    T, C, n = args.tokens, args.C, args.n
    N, K = (n + 2) * n, n * C
    es = 2
    unit = T * C * es
    x = torch.randn(T, n, C, device=dev, dtype=torch.bfloat16)
    g = torch.randn_like(x)
    y = torch.randn(T, C, device=dev, dtype=torch.bfloat16)
    fn = torch.randn(N, K, device=dev) * 0.02
    base = torch.randn(N, device=dev)
    scale = torch.rand(3, device=dev) + 0.5
    hp, hq, hr, mix = co.coef_forward_triton(x, fn, base, scale, 20, 1e-20, 0.0)
    dpre, dpost, dres = torch.randn_like(hp), torch.randn_like(hq), torch.randn_like(hr)
    a = torch.empty(2**29, dtype=torch.bfloat16, device=dev)
    b = torch.empty_like(a)
    bw = 2 * a.numel() * 2 / (do_bench(lambda: b.copy_(a), return_mode="median") * 1e-3)
    del a, b
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s", flush=True)

    fwd = lambda: co.coef_forward_triton(x, fn, base, scale, 20, 1e-20, 0.0)  # noqa: E731
    # the fused connection's forward: coefficients and the pre-mix h (in the token kernel or
    # the pre-mix kernel, as the ``pre_mix`` option says)
    fwd_h = lambda: co.coef_forward_triton(x, fn, base, scale, 20, 1e-20, 0.0,  # noqa: E731
                                           pre_mix=True)
    bwd = lambda: co.coef_backward_triton(x, fn, base, scale, mix, dpre, dpost, dres, 20,  # noqa: E731
                                          0.0, h_pre=hp, dh=y, h_res=hr, gout=g)
    x16, y16, g16 = x.half(), y.half(), g.half()
    bwd_general = lambda: co.coef_backward_triton(  # noqa: E731
        x16, fn, base, scale, mix, dpre, dpost, dres, 20, 0.0, h_pre=hp, dh=y16, h_res=hr, gout=g16)
    b_fwd = n * unit + N * K * 4
    b_bwd = (3 * n + 1) * unit + 2 * N * K * 4
    # (tuning key, callable, minimum bytes, configurations); each key keeps its fastest
    # configuration before the next key is swept
    jobs = [
        ("coef_gemm", fwd, b_fwd,
         [dict(BT=64, BK=64, num_warps=4, num_stages=3, waves=2),
          dict(BT=128, BK=128, num_warps=8, num_stages=3, waves=2),
          dict(BT=64, BK=128, num_warps=8, num_stages=3, waves=2),
          dict(BT=128, BK=64, num_warps=8, num_stages=4, waves=2),
          dict(BT=128, BK=128, num_warps=8, num_stages=3, waves=4),
          dict(BT=64, BK=256, num_warps=8, num_stages=3, waves=2),
          dict(BT=128, BK=64, num_warps=8, num_stages=4, waves=4),
          dict(BT=256, BK=64, num_warps=8, num_stages=3, waves=4),
          dict(BT=128, BK=128, num_warps=8, num_stages=2, waves=4),
          dict(BT=128, BK=64, num_warps=4, num_stages=4, waves=4)]),
        # (BT, BC, num_warps, pre_mix): first the pre-mix in its own kernel
        ("coef_token", fwd_h, b_fwd + (n + 1) * unit, _token_configs(
            (8, 64, 1, False), (4, 64, 1, True), (8, 64, 1, True), (8, 128, 2, True),
            (8, 256, 4, True), (4, 128, 2, True), (16, 64, 2, True), (2, 256, 2, True))),
        ("coef_token_bwd", bwd, b_bwd + (n + 1) * unit, _token_configs(
            (4, 128, 1, False), (4, 128, 1, True), (4, 64, 1, True), (4, 256, 2, True),
            (8, 128, 2, True), (2, 256, 2, True), (4, 128, 4, True), (8, 64, 1, True))),
        ("coef_dfn", bwd_general, b_bwd,
         [dict(BT=32, BK=128, num_warps=4, num_stages=4, waves=2),
          dict(BT=64, BK=128, num_warps=4, num_stages=3, waves=2),
          dict(BT=64, BK=64, num_warps=4, num_stages=3, waves=1),
          dict(BT=32, BK=64, num_warps=4, num_stages=4, waves=1),
          dict(BT=64, BK=128, num_warps=4, num_stages=3, waves=1),
          dict(BT=64, BK=32, num_warps=2, num_stages=4, waves=1)]),
        ("coef_dx4", bwd, b_bwd,  # bf16, n <= 4: per-stream tiles, dfn in the same pass
         [dict(BT=32, BC=64, num_warps=4, num_stages=2, tiles_per_program=32, pipeline_stages=2),
          dict(BT=16, BC=64, num_warps=4, num_stages=2, tiles_per_program=64, pipeline_stages=2),
          dict(BT=16, BC=128, num_warps=4, num_stages=2, tiles_per_program=64, pipeline_stages=2),
          dict(BT=32, BC=64, num_warps=4, num_stages=2, tiles_per_program=16, pipeline_stages=2),
          dict(BT=16, BC=64, num_warps=2, num_stages=2, tiles_per_program=64, pipeline_stages=2),
          dict(BT=32, BC=64, num_warps=4, num_stages=2, tiles_per_program=32, pipeline_stages=3)]),
        ("coef_dx", bwd_general, b_bwd,  # the 3D-tile kernel (fp32 / fp16 streams, n > 4)
         [dict(BT=64, BC=32, num_warps=4, num_stages=2, tiles_per_program=16, pipeline_stages=3),
          dict(BT=64, BC=32, num_warps=4, num_stages=2, tiles_per_program=16, pipeline_stages=2)]),
        ("pre_mix_fwd", lambda: pm.pre_mix_forward_triton(x, hp), (n + 1) * unit,
         [dict(BT=1, BC=2048, num_warps=8), dict(BT=1, BC=1024, num_warps=4),
          dict(BT=2, BC=1024, num_warps=8), dict(BT=1, BC=4096, num_warps=8)]),
        ("pre_mix_bwd", lambda: pm.pre_mix_backward_triton(x, hp, y, False), (n + 1) * unit,
         [dict(BT=1, BC=1024, num_warps=8), dict(BT=1, BC=512, num_warps=8),
          dict(BT=1, BC=2048, num_warps=8), dict(BT=2, BC=512, num_warps=8)]),
        ("post_res_fwd", lambda: po.post_res_forward_triton(x, y, hq, hr), (2 * n + 1) * unit,
         [dict(BT=1, BC=2048, num_warps=8), dict(BT=1, BC=1024, num_warps=4),
          dict(BT=2, BC=1024, num_warps=8), dict(BT=1, BC=4096, num_warps=8)]),
        ("post_res_bwd", lambda: po.post_res_backward_triton(x, y, hq, hr, g, False),
         (2 * n + 2) * unit,
         [dict(BT=2, BC=512, num_warps=4), dict(BT=1, BC=1024, num_warps=4),
          dict(BT=4, BC=256, num_warps=4), dict(BT=2, BC=1024, num_warps=8),
          dict(BT=4, BC=512, num_warps=8), dict(BT=8, BC=256, num_warps=8),
          dict(BT=1, BC=2048, num_warps=8), dict(BT=1, BC=512, num_warps=2)]),
    ]
    best = {}
    report = {}
    if args.configs:
        key, _, text = args.configs.partition("=")
        if key not in {j[0] for j in jobs}:
            print(f"--configs: unknown key {key!r}; one of {', '.join(j[0] for j in jobs)}",
                  file=sys.stderr)
            return 2
        jobs = [(j[0], j[1], j[2], json.loads(text)) if j[0] == key else j for j in jobs]
    if args.only:
        jobs = [j for j in jobs if j[0] in args.only.split(",")]
    for name, fn_call, nbytes, cfgs in jobs:
        times = {i: [] for i in range(len(cfgs))}
        for r in range(args.rounds):
            order = list(range(len(cfgs)))
            order = order[r % len(order):] + order[:r % len(order)]
            for i in order:
                if times[i] is None:  # failed before
                    continue
                TUNING[name] = cfgs[i]
                try:
                    times[i].append(do_bench(fn_call, warmup=10, rep=40, return_mode="median"))
                except Exception as e:  # noqa: BLE001
                    print(f"{name} {cfgs[i]} FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
                    times[i] = None
        results = []
        for i, cfg in enumerate(cfgs):
            if times[i]:
                ms = statistics.median(times[i])
                pct = 100 * nbytes / (ms * 1e-3) / bw
                results.append((ms, cfg))
                spread = f" ({min(times[i]) * 1e3:.1f}-{max(times[i]) * 1e3:.1f})" if args.rounds > 1 else ""
                print(f"{name:14s} {ms * 1e3:8.1f} us{spread} {pct:5.1f}% of copy bw  {cfg}",
                      flush=True)
        TUNING.pop(name, None)
        if results:
            ms, cfg = min(results, key=lambda r: r[0])
            best[name] = TUNING[name] = cfg
            report[name] = {"best_us": ms * 1e3, "pct_copy_bw": 100 * nbytes / (ms * 1e-3) / bw,
                            "all": [(r[0] * 1e3, r[1]) for r in results]}
    with open(args.out, "w") as f:
        json.dump(best, f, indent=1)
    with open(args.out.replace(".json", "_report.json"), "w") as f:
        json.dump({"copy_bw_TBps": bw / 1e12, **report}, f, indent=1)
    print(json.dumps(best))
    return 0


if __name__ == "__main__":
    sys.exit(main())
