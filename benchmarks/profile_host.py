"""Where the host time of the fused mHC ops goes: a Python profile (cProfile) of one eager
connection forward + backward, and a ``torch.profiler`` table of a compiled gpt-small step
(host and GPU time per op), printed and written under ``--out``.

    python benchmarks/profile_host.py --out prof/
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from host_overhead import _connection  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="prof")
    ap.add_argument("--compiled", action="store_true", help="also profile a compiled step")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    conn, _ = _connection(4096, 4096)
    for _ in range(5):
        conn()
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(50):
        conn()
    prof.disable()
    torch.cuda.synchronize()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(35)
    s2 = io.StringIO()
    pstats.Stats(prof, stream=s2).sort_stats("cumtime").print_stats(35)
    text = s.getvalue() + s2.getvalue()
    open(os.path.join(args.out, "connection_cprofile.txt"), "w").write(text)
    print(text[:6000])
    if not args.compiled:
        return
    from torch.profiler import ProfilerActivity, profile

    from torch_mhc.bench import _Trainee
    from types import SimpleNamespace
    ns = SimpleNamespace(seq=None, n=4, dtype="bf16", optimizer="fused", cuda_graph=False,
                         compile="default", warmup=3)
    dev = torch.device("cuda")
    for variant in ("mhc-triton", "residual"):
        run = _Trainee("gpt-small", variant, 8, ns, dev)
        run.warm()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
            for i in range(3):
                run.step(i)
            torch.cuda.synchronize()
        t = p.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
        t2 = p.key_averages().table(sort_by="self_cuda_time_total", row_limit=25)
        open(os.path.join(args.out, f"compiled_{variant}.txt"), "w").write(t + "\n" + t2)
        print(variant, t[:5000], t2[:5000], sep="\n")
        run.free()


if __name__ == "__main__":
    main()
