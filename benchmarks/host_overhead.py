"""Host (CPU) cost of the fused mHC ops in eager mode, against their GPU time.

Small models are launch-bound: the GPU waits for Python. For one mHC connection forward +
backward (identity branch, bf16, n = 4) at two shapes, T = C = 4096 (the ``layer`` suite's)
and T = 8192, C = 1024 (``gpt-small``'s), this measures

* ``host_us``: time to issue it (no synchronisation; the GPU runs behind),
* ``wall_us``: synchronised wall time per connection over a run of them,
* ``gpu_us``: the sum of its kernels' durations (torch.profiler),

and ``wall_over_gpu`` (1.0 = the GPU never waits for the host), each with the cached fast
Triton launch on and off (``TORCH_MHC_FAST_LAUNCH``), and compiled
(``torch.compile(fullgraph=True)``, modes ``default`` and ``reduce-overhead``), one
connection alone and ``--stack`` of them as one graph (per connection: what a compiled
model sees); then a gpt-small training step (eager) for the residual and mHC models: issue
and wall time. Writes JSON.

    python benchmarks/host_overhead.py --out host_overhead.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from types import SimpleNamespace

import torch

from torch_mhc.bench import _commit, _device_info, _gpu_kernel_time, _Trainee, _versions
from torch_mhc.ops import _launch
from torch_mhc.ops.connection import connection_post, connection_pre


def _host_and_wall_us(fn, reps):
    """(issue time, synchronised wall time) per call of ``fn``, microseconds."""
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    return (t1 - t0) / reps * 1e6, (t2 - t0) / reps * 1e6


class _Stack(torch.nn.Module):
    """``depth`` mHC connections in a row with identity branches, their ``fn, base, scale``
    held as parameters, as a model holds them (static inputs for CUDA graphs)."""

    def __init__(self, depth, n, C, dev):
        super().__init__()
        N, K = (n + 2) * n, n * C
        P = torch.nn.Parameter
        self.fn = torch.nn.ParameterList(P(torch.randn(N, K, device=dev) * 0.02)
                                         for _ in range(depth))
        self.base = torch.nn.ParameterList(P(torch.randn(N, device=dev)) for _ in range(depth))
        self.scale = torch.nn.ParameterList(P(torch.rand(3, device=dev) + 0.5)
                                            for _ in range(depth))

    def forward(self, x):
        for fn, base, scale in zip(self.fn, self.base, self.scale):
            h, _, h_post, h_res, link = connection_pre(x, fn, base, scale)
            x = connection_post(x, h, h_post, h_res, link)
        return x


def _connection(T, C, n=4, dev="cuda", compile_mode=None, depth=1):
    """``(conn, leaves)``: ``conn()`` runs one connection forward + backward (``depth``
    connections in a row, ``_Stack``); with ``compile_mode`` (``"default"``,
    ``"reduce-overhead"``) the forward is ``torch.compile(fullgraph=True)``'d with that mode
    (its backward compiled with it). ``leaves``: the streams, then the parameters."""
    x = torch.randn(T, n, C, device=dev, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(T, n, C, device=dev, dtype=torch.bfloat16)
    stack = _Stack(depth, n, C, dev)
    leaves = (x, *stack.parameters())
    forward = stack
    if compile_mode is not None:
        forward = torch.compile(stack, fullgraph=True, mode=compile_mode)

    def conn():
        for t in leaves:
            t.grad = None
        if compile_mode == "reduce-overhead":  # one replay of each graph per call
            torch.compiler.cudagraph_mark_step_begin()
        forward(x).backward(w)
    return conn, leaves


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10, help="gpt-small steps timed")
    ap.add_argument("--reps", type=int, default=50, help="connections per timing")
    ap.add_argument("--out", default="host_overhead.json")
    ap.add_argument("--no-gpt-small", action="store_true",
                    help="time the connection only (mhc bench times gpt-small steps)")
    ap.add_argument("--stack", type=int, default=12,
                    help="also compile this many connections as one graph and report per "
                         "connection (a model's view; default: %(default)s)")
    ap.add_argument("--no-compiled", action="store_true",
                    help="skip the compiled connection (torch.compile, default and "
                         "reduce-overhead modes)")
    args = ap.parse_args()
    dev = torch.device("cuda")
    res = {"suite": "host_overhead", "device": _device_info(dev), **_versions(),
           "commit": _commit(), "connection": {}, "gpt_small_eager": {}}
    for T, C in ((4096, 4096), (8192, 1024)):
        conn, leaves = _connection(T, C)
        grads = []
        for fast in (False, True):  # the fast launch must give the same bits
            _launch.FAST_LAUNCH = fast
            conn()
            conn()
            grads.append([t.grad.clone() for t in leaves])
        same = all(torch.equal(a, b) for a, b in zip(*grads))
        gpu_us, kernels = _gpu_kernel_time(conn, dev)
        for fast in (False, True):
            _launch.FAST_LAUNCH = fast
            host, wall = _host_and_wall_us(conn, args.reps)
            key = f"T{T}_C{C}_" + ("fast_launch" if fast else "triton_launch")
            res["connection"][key] = {
                "host_us": host, "wall_us": wall, "gpu_us": gpu_us,
                "wall_over_gpu": wall / gpu_us, "fast_equals_triton_launch": same,
                "kernels": kernels}
            print(f"{key}: issue {host:.0f} us, wall {wall:.0f} us, GPU {gpu_us:.0f} us "
                  f"(wall/GPU {wall / gpu_us:.2f})", flush=True)
        del conn, leaves, grads
        torch.cuda.empty_cache()
        # compiled: Inductor launches the kernels (no Python launchers); reduce-overhead
        # replays CUDA graphs. GPU time of the compiled kernels (the graphs replay the same).
        # A graph of one connection pays the compiled wrappers' per-call cost for that one
        # connection; a model pays it once for all of them: ``--stack`` connections in one
        # graph, per connection.
        for mode, depth in [] if args.no_compiled else [
                (m, d) for m in ("default", "reduce-overhead") for d in sorted({1, args.stack})]:
            conn, _ = _connection(T, C, compile_mode=mode, depth=depth)
            for _ in range(3):
                conn()
            gpu_c, kernels_c = _gpu_kernel_time(conn, dev)
            host, wall = _host_and_wall_us(conn, args.reps)
            host, wall, gpu_c = host / depth, wall / depth, gpu_c / depth
            key = f"T{T}_C{C}_compiled_{mode}" + (f"_stack{depth}" if depth > 1 else "")
            res["connection"][key] = {"host_us": host, "wall_us": wall, "gpu_us": gpu_c,
                                      "wall_over_gpu": wall / gpu_c, "depth": depth,
                                      "kernels": kernels_c}
            print(f"{key}: issue {host:.0f} us, wall {wall:.0f} us, GPU {gpu_c:.0f} us "
                  f"per connection (wall/GPU {wall / gpu_c:.2f})", flush=True)
            del conn
            torch.cuda.empty_cache()
    _launch.FAST_LAUNCH = True
    ns = SimpleNamespace(seq=None, n=4, dtype="bf16", optimizer="fused", warmup=3)
    for variant in () if args.no_gpt_small else ("residual", "mhc-triton"):
        run = _Trainee("gpt-small", variant, 8, ns, dev)
        run.warm()
        issue, wall = zip(*(_host_and_wall_us(lambda: run.step(0), 1) for _ in range(args.steps)))
        r = res["gpt_small_eager"][variant] = {
            "issue_ms": statistics.median(issue) / 1e3, "wall_ms": statistics.median(wall) / 1e3}
        print(f"gpt-small {variant}: wall {r['wall_ms']:.1f} ms, issue {r['issue_ms']:.1f} ms",
              flush=True)
        run.free()
    res["config"] = {"n": 4, "dtype": "bf16", "branch": "identity", "reps": args.reps,
                     "gpt_small": "batch 8, seq 1024, fused AdamW, eager"}
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
