"""Where the host time of the fused mHC ops goes: a Python profile (cProfile) of one eager
connection forward + backward (with its launches and with them stubbed out, and the host
cost of a few primitives for comparing machines), and with ``--step eager|compiled`` a
``torch.profiler`` table of gpt-small training steps (host and GPU time per op), printed and
written under ``--out``.

    python benchmarks/profile_host.py --out prof/
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from host_overhead import _connection, _host_and_wall_us  # noqa: E402


def _per_call_us(fn, reps=50):
    """Host time to issue one call of ``fn``, microseconds."""
    return _host_and_wall_us(fn, reps)[0]


def _breakdown(T, C):
    """Issue time of one connection forward + backward, with the Triton launches and with
    every launch replaced by a no-op (what the rest of the Python costs), and the launch
    count."""
    from torch_mhc.ops import _launch
    conn, _ = _connection(T, C)
    out = {"issue_us": _per_call_us(conn)}
    real, real_bound, count = _launch.LazyJit.__getitem__, _launch.Launch.__call__, [0]

    def no_launch(self, grid):
        def run(*a, **k):
            count[0] += 1
        return run

    def no_bound_launch(self, *args):
        count[0] += 1
    _launch.LazyJit.__getitem__, _launch.Launch.__call__ = no_launch, no_bound_launch
    try:
        out["issue_without_launches_us"] = _per_call_us(conn)
        count[0] = 0
        conn()
        out["launches"] = count[0]
    finally:
        _launch.LazyJit.__getitem__, _launch.Launch.__call__ = real, real_bound
    out["per_launch_us"] = (out["issue_us"] - out["issue_without_launches_us"]) / out["launches"]
    return out


def _calibration():
    """Host cost of a few primitives on this machine (us per call): to compare hosts."""
    import triton
    import triton.language as tl

    @triton.jit
    def k20(a, b, c, d, e, f, g, h, i, j, n0, n1, n2, n3, n4, n5, n6, n7, n8, n9,
            BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        tl.store(a + pid, tl.load(b + pid) + n0)

    dev = "cuda"
    ts = [torch.zeros(256, device=dev) for _ in range(10)]
    ns = [3, 5, 7, 9, 11, 13, 15, 17, 19, 21]
    out = {"torch.empty": _per_call_us(lambda: torch.empty(1 << 20, device=dev), 200),
           "tensor.add_": _per_call_us(lambda: ts[0].add_(1), 200),
           "torch.cuda.current_device": _per_call_us(torch.cuda.current_device, 200),
           "triton_jit_launch_20_args": _per_call_us(lambda: k20[(1,)](*ts, *ns, BLOCK=64), 200)}
    compiled = k20[(1,)](*ts, *ns, BLOCK=64)
    out["compiled_kernel_launch_20_args"] = _per_call_us(
        lambda: compiled[(1, 1, 1)](*ts, *ns, 64), 200)
    # the launcher itself with addresses, as the cached fast launch calls it
    ptrs = [t.data_ptr() for t in ts]
    stream = torch._C._cuda_getCurrentRawStream(0)
    out["compiled_kernel_run_20_addresses"] = _per_call_us(
        lambda: compiled.run(1, 1, 1, stream, compiled.function, compiled.packed_metadata,
                             None, None, None, *ptrs, *ns, 64), 200)
    x = torch.empty(64, 4, 64, device=dev)
    for name, fn in (("tensor.data_ptr", x.data_ptr), ("tensor.get_device", x.get_device),
                     ("cuda_getCurrentRawStream", lambda: torch._C._cuda_getCurrentRawStream(0)),
                     ("tensor.view", lambda: x.view(64, 256)),
                     ("tensor.reshape", lambda: x.reshape(-1, 4, 64)),
                     ("tensor.as_strided", lambda: x.as_strided((64, 4), (4, 1), 8)),
                     ("tensor.expand", lambda: x[:1].expand(8, 4, 64)),
                     ("tensor.new_zeros_scalar", lambda: x.new_zeros(())),
                     ("tensor.sum0_small", lambda: x.sum(0)),
                     ("torch.empty_small", lambda: torch.empty(64, 4, device=dev))):
        out[name] = _per_call_us(fn, 200)
    return out


def _launch_paths(conn):
    """How one connection's launches went: the cached fast launch, Triton's own launch of a
    cached kernel (a profiler hook was set), or Triton's full path (first launch of a key)."""
    from torch_mhc.ops import _launch
    counts = {"fast": 0, "hooked": 0, "triton_full": 0}
    real_run, real_jit = _launch._run_compiled, _launch.LazyJit.jit

    def run(*a):
        ok = real_run(*a)
        counts["fast" if ok else "hooked"] += 1
        return ok

    def jit(self, interpret=None):
        counts["triton_full"] += 1
        return real_jit(self, interpret)
    _launch._run_compiled, _launch.LazyJit.jit = run, jit
    try:
        conn()
        torch.cuda.synchronize()
    finally:
        _launch._run_compiled, _launch.LazyJit.jit = real_run, real_jit
    counts["fast_launch_on"] = _launch.FAST_LAUNCH
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="prof")
    ap.add_argument("--step", choices=("none", "eager", "compiled"), default="none",
                    help="also profile three gpt-small training steps (mHC and residual), "
                         "eager or compiled: host and GPU time per op")
    ap.add_argument("--only-step", action="store_true",
                    help="skip the connection breakdown and profile (with --step)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if not args.only_step:
        _connection_profiles(args.out)
    if args.step != "none":
        _step_profiles(args)


def _connection_profiles(out_dir):
    """The issue-time breakdown and a Python profile of one eager connection."""
    breakdown = {f"T{T}_C{C}": _breakdown(T, C) for T, C in ((4096, 4096), (8192, 1024))}
    breakdown["calibration_us"] = _calibration()
    conn, _ = _connection(8192, 1024)
    conn()
    breakdown["launch_paths"] = _launch_paths(conn)
    print(json.dumps(breakdown, indent=1))
    with open(os.path.join(out_dir, "host_breakdown.json"), "w") as f:
        json.dump(breakdown, f, indent=1)
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
    open(os.path.join(out_dir, "connection_cprofile.txt"), "w").write(text)
    print(text[:6000])


def _step_profiles(args):
    """``torch.profiler`` tables (host and GPU time per op) of three gpt-small steps, mHC and
    residual, eager or compiled."""
    from torch.profiler import ProfilerActivity, profile

    from torch_mhc.bench import _Trainee
    from types import SimpleNamespace
    ns = SimpleNamespace(seq=None, n=4, dtype="bf16", optimizer="fused", cuda_graph=False,
                         compile="default" if args.step == "compiled" else None, warmup=3)
    dev = torch.device("cuda")
    for variant in ("mhc-triton", "residual"):
        run = _Trainee("gpt-small", variant, 8, ns, dev)
        run.warm()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
            for i in range(3):
                run.step(i)
            torch.cuda.synchronize()
        avg = p.key_averages()
        t = avg.table(sort_by="self_cpu_time_total", row_limit=40)
        t2 = avg.table(sort_by="self_cuda_time_total", row_limit=45)
        # anything that makes the host wait for the GPU inside a step
        waits = ("\n".join(f"{e.key}: {e.count} calls, {e.cpu_time_total:.0f} us"
                           for e in avg if "ynchronize" in e.key or "Memcpy" in e.key)
                 or "no synchronising calls")
        open(os.path.join(args.out, f"{args.step}_{variant}.txt"), "w").write(
            t + "\n" + t2 + "\nhost waits for the GPU:\n" + waits + "\n")
        print(variant, "host waits:", waits)
        print(variant, t[:5000], t2[:5000], sep="\n")
        run.free()


if __name__ == "__main__":
    main()
