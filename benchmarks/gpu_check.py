"""One call on a GPU machine: CUDA correctness tests of the fused kernels, then the bench
suites, everything written under $OUT (or --out), a short summary printed last.

    PYTHONPATH=src python benchmarks/gpu_check.py [--suites kernels,layer,gpt-small]
        [--skip-tests] [--steps 10] [--warmup 3] [--budget 560]

Each step runs in its own process with a time limit taken from the remaining budget, so a
hang or an out-of-memory in one suite still leaves the others' JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

TESTS = ["tests/ops/test_coefficients_triton.py", "tests/ops/test_pre_mix_triton.py",
         "tests/ops/test_post_res_triton.py", "tests/ops/test_connection_triton.py"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--suites", default="kernels,layer,gpt-small")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--budget", type=float, default=560.0, help="seconds for everything")
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    ap.add_argument("--extra", default="", help="extra args for every bench call")
    ap.add_argument("--sweep", action="store_true",
                    help="time launch configurations first and bench with the fastest")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    left = lambda: args.budget - (time.time() - t0)  # noqa: E731
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in ["src", env.get("PYTHONPATH", "")] if p)
    summary = []
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,clocks.sm,clocks.mem,memory.used",
                              "--format=csv"], capture_output=True, text=True, timeout=20).stdout
        summary.append(smi.strip())
    except Exception as e:  # noqa: BLE001
        summary.append(f"nvidia-smi: {e}")
    if not args.skip_tests:
        with open(os.path.join(args.out, "pytest.log"), "w") as log:
            try:
                r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                    "-rfE", *TESTS], stdout=log, stderr=subprocess.STDOUT, env=env,
                                   timeout=max(30, min(240, left() - 60)))
                rc = r.returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        tail = open(os.path.join(args.out, "pytest.log")).read().strip().splitlines()[-12:]
        summary.append(f"pytest rc={rc} ({time.time() - t0:.0f}s)\n  " + "\n  ".join(tail))
        print(summary[-1], flush=True)
    if args.sweep and left() > 120:
        tun = os.path.join(args.out, "tuning.json")
        ts = time.time()
        try:
            r = subprocess.run([sys.executable, "benchmarks/sweep.py", "--out", tun], env=env,
                               timeout=max(30, min(200, left() - 150)), capture_output=True, text=True)
            print(f"== sweep rc={r.returncode} {time.time() - ts:.0f}s\n{r.stdout[-6000:]}\n{r.stderr[-2000:]}",
                  flush=True)
        except subprocess.TimeoutExpired as e:
            print(f"== sweep timeout\n{(e.stdout or b'')[-4000:]}", flush=True)
        if os.path.exists(tun):
            env["TORCH_MHC_TUNING"] = os.path.abspath(tun)
            summary.append("tuning: " + open(tun).read().replace("\n", ""))
    for suite in [s for s in args.suites.split(",") if s]:
        if left() < 20:
            summary.append(f"{suite}: skipped (budget)")
            continue
        out = os.path.join(args.out, f"{suite}.json")
        cmd = [sys.executable, "-m", "torch_mhc.bench", "--suite", suite, "--out", out,
               "--steps", str(args.steps), "--warmup", str(args.warmup), *args.extra.split()]
        ts = time.time()
        try:
            r = subprocess.run(cmd, env=env, timeout=max(20, left() - 5), capture_output=True,
                               text=True)
            rc = r.returncode
            err = r.stderr[-3000:]
        except subprocess.TimeoutExpired as e:
            rc, err = "timeout", (e.stderr or b"")[-3000:].decode(errors="replace") if isinstance(e.stderr, bytes) else str(e.stderr)[-3000:]
        print(f"== {suite} rc={rc} {time.time() - ts:.0f}s\n{err}", flush=True)
        if os.path.exists(out):
            res = json.load(open(out))
            line = f"{suite}: overhead {res.get('overhead_pct')} % mem {res.get('peak_mem_overhead_pct')} %"
            for v, r2 in res.get("variants", {}).items():
                line += f"\n  {v:11s} " + (f"{r2['median_ms']:8.2f} ms  {r2.get('overhead_pct', 0):+7.1f}%  "
                                           f"peak {r2.get('peak_mem_gib') or 0:.2f} GiB "
                                           f"({r2.get('peak_mem_overhead_pct', 0):+.1f}%)"
                                           if "median_ms" in r2 else str(r2)[:300])
            if suite == "kernels":
                line += f"\n  copy bw {res.get('copy_bandwidth_TBps')} TB/s"
                for row in res["rows"]:
                    nan = float("nan")
                    line += ("\n  {op:13s} {impl:7s} fwd {f:8.1f} us gpu {fg:8.1f} us ({fp:5.1f}%)  "
                             "bwd {b:8.1f} us gpu {bg:8.1f} us ({bp:5.1f}%)").format(
                        op=row["op"], impl=row["impl"], f=row.get("fwd_us", nan),
                        fg=row.get("fwd_gpu_us") or nan, fp=row.get("fwd_gpu_pct_copy_bw", nan),
                        b=row.get("bwd_us", nan), bg=row.get("bwd_gpu_us") or nan,
                        bp=row.get("bwd_gpu_pct_copy_bw", nan)) + (
                        f" {row.get('error', row.get('skipped'))}" if ("error" in row or "skipped" in row) else "")
            summary.append(line)
        else:
            summary.append(f"{suite}: no JSON (rc={rc})")
    text = "\n".join(summary) + f"\ntotal {time.time() - t0:.0f}s"
    open(os.path.join(args.out, "summary.txt"), "w").write(text + "\n")
    print("\n===== SUMMARY =====\n" + text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
