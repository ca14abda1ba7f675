"""Where a training step's time goes: host (Python, launches) vs GPU kernels, per variant.

For each variant of a ``mhc bench`` model suite this builds the same model, warms up, then
times ``--steps`` steps (wall, synchronised), the host time to *issue* one step (forward +
backward + optimizer without a synchronisation: if it is close to the wall time, the step is
launch-bound), and one profiled step (torch.profiler): summed kernel time and the top
kernels / CPU ops. Writes JSON.

    PYTHONPATH=src python benchmarks/profile_step.py --suite gpt-small [--compile] --out prof.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from types import SimpleNamespace

import torch

from torch_mhc.bench import _build_gpt, _commit, _device_info, _versions, make_optimizer


def gpu_gaps(prof, top=12):
    """Where the GPU sat idle inside the profiled step: the span from the first kernel's
    start to the last one's end, the idle time in it (gaps between consecutive kernels) and
    the largest gaps with the kernels on either side."""
    ks = sorted((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.end > 0)
    if not ks:
        return {}
    gaps, busy_end = [], ks[0][1]
    for (s0, e0, name), prev in zip(ks[1:], ks):
        if s0 > busy_end:
            gaps.append((s0 - busy_end, prev[2][:60], name[:60]))
        busy_end = max(busy_end, e0)
    gaps.sort(key=lambda g: -g[0])
    return {"gpu_span_ms": (busy_end - ks[0][0]) / 1e3,
            "gpu_idle_ms": sum(g[0] for g in gaps) / 1e3,
            "gpu_gaps_over_20us": sum(1 for g in gaps if g[0] > 20),
            "top_gaps_us": [(round(g, 1), a, b) for g, a, b in gaps[:top]]}


def profile_variant(suite, variant, args, device):
    ns = SimpleNamespace(seq=args.seq, n=4, dtype="bf16")
    model, cfg = _build_gpt(args.preset or suite, variant, ns, device)
    batch = args.batch or (1 if suite == "layer" else 8)
    opt = make_optimizer(model, args.optimizer, device)
    fwd = torch.compile(model, fullgraph=True) if args.compile else model
    idx = torch.randint(0, cfg.vocab_size, (batch, cfg.seq_len), device=device)
    tgt = torch.randint(0, cfg.vocab_size, (batch, cfg.seq_len), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        _, loss = fwd(idx, tgt)
        loss.backward()
        opt.step()

    for _ in range(5 if args.compile else 3):
        step()
    torch.cuda.synchronize()
    walls, issue = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        issue.append((t1 - t0) * 1e3)
        walls.append((t2 - t0) * 1e3)
    # issue time with the GPU kept busy ahead of the host: a long kernel queued first
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    ka = prof.key_averages()
    kernels = sorted(((e.key, e.device_time_total, e.count) for e in ka if e.device_time_total > 0
                      and e.self_device_time_total > 0), key=lambda r: -r[1])
    gpu_total = sum(e.self_device_time_total for e in ka) / 1e3
    on_gpu = sorted(((e.key, e.self_device_time_total, e.count) for e in ka
                     if e.device_type == torch.autograd.DeviceType.CUDA), key=lambda r: -r[1])
    cpu_ops = sorted(((e.key, e.self_cpu_time_total, e.count) for e in ka),
                     key=lambda r: -r[1])[:25]
    res = {"wall_ms": statistics.median(walls), "issue_ms": statistics.median(issue),
           "gpu_kernel_ms": gpu_total, **gpu_gaps(prof),
           "top_kernels_us": [(k, round(t, 1), c) for k, t, c in kernels[:30]],
           "gpu_kernels_us": [(k, round(t, 1), c) for k, t, c in on_gpu],
           "top_cpu_self_us": [(k, round(t, 1), c) for k, t, c in cpu_ops]}
    del model, opt
    torch.cuda.empty_cache()
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", default="gpt-small")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--variants", default="residual,mhc-triton")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--seq", type=int, default=None)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--optimizer", choices=("fused", "foreach"), default="fused")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile(model, fullgraph=True) each variant (Inductor default)")
    ap.add_argument("--out", default="profile_step.json")
    args = ap.parse_args()
    device = torch.device("cuda")
    out = {"suite": args.suite, "compiled": args.compile, "device": _device_info(device),
           **_versions(), "commit": _commit(), "variants": {}}
    for v in args.variants.split(","):
        out["variants"][v] = r = profile_variant(args.suite, v, args, device)
        print(f"{args.suite} {v}: wall {r['wall_ms']:.2f} ms, issue {r['issue_ms']:.2f} ms, "
              f"kernels {r['gpu_kernel_ms']:.2f} ms", flush=True)
        for k, t, c in r["top_kernels_us"][:12]:
            print(f"    {t:9.1f} us x{c:4d}  {k[:90]}")
        for k, t, c in r["top_cpu_self_us"][:10]:
            print(f"    cpu {t:9.1f} us x{c:4d}  {k[:80]}")
    if len(out["variants"]) == 2:  # what the second variant adds, kernel by kernel
        (_, a), (vb, b) = out["variants"].items()
        ta = {k: t for k, t, _ in a["gpu_kernels_us"]}
        tb = {k: (t, c) for k, t, c in b["gpu_kernels_us"]}
        diff = []
        for k in {*ta, *tb}:
            t, c = tb.get(k, (0.0, 0))
            diff.append((k, round(t - ta.get(k, 0.0), 1), c))
        diff.sort(key=lambda r: -abs(r[1]))
        out["kernel_diff_us"] = diff[:40]
        print(f"kernels {vb} minus the first variant (us, one step):")
        for k, t, c in diff[:25]:
            print(f"    {t:9.1f} x{c:4d}  {k[:90]}")
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
