"""Host cost of the eager fused connection, measured without a GPU.

The eager path of a small model is host-bound, and its host cost is Python and tensor
bookkeeping that runs the same on any machine. This runs one mHC connection forward +
backward (``connection_pre`` / ``connection_post``, bf16, n = 4) on CPU tensors through the
GPU launch path itself: plans, ``Launch`` objects and their cache keys, with a stand-in for
Triton's compiled kernel whose launch does nothing (and no CUDA device or stream lookups).
It prints the thread time per connection and the launches it made, so host-side changes can
be compared before a GPU is at hand (``host_overhead.py`` measures the real thing). Times
are this CPU's; a loaded GPU host was 3-4x slower per Python step (``NOTES.md``).

    PYTHONPATH=src python benchmarks/host_model_cpu.py [--profile]
"""
from __future__ import annotations

import argparse
import cProfile
import importlib
import os
import pstats
import sys
import time

import torch


class _Compiled:
    """What Triton's first launch returns; its launcher does nothing."""

    function, packed_metadata = 0, ()

    def __init__(self):
        self.launches = 0

    def run(self, *args):
        self.launches += 1


def _simulate_gpu_launches(compiled: _Compiled) -> None:
    """Send every kernel through the GPU launch path with ``compiled`` as the kernel."""
    launch = importlib.import_module("torch_mhc.ops._launch")

    class Jit:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: compiled

    launch.LazyJit.jit = lambda self, interpret=None: Jit()
    launch.interpret_mode = lambda: False
    torch.cuda.current_device = lambda: 0
    torch._C._cuda_getCurrentRawStream = lambda device: 0
    for name in ("torch_mhc.ops.connection", "torch_mhc.ops.post_res"):
        importlib.import_module(name).kernel_impl = lambda x: "triton"
    tuning = importlib.import_module("torch_mhc.ops.tuning")
    tuning.interpret_mode = lambda: False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=64, help="T")
    ap.add_argument("--C", type=int, default=64, help="channels per stream (the launch "
                    "configuration rows follow it: C <= 1024 is gpt-small's)")
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--profile", action="store_true", help="also print a cProfile table")
    args = ap.parse_args()
    compiled = _Compiled()
    _simulate_gpu_launches(compiled)
    sys.path.insert(0, os.path.dirname(__file__))
    from host_overhead import _connection  # the GPU benchmark's connection, on the CPU
    n, C = 4, args.C
    connection, _ = _connection(args.tokens, C, n, dev="cpu")
    connection()
    compiled.launches = 0
    connection()
    launches = compiled.launches
    best = []
    for _ in range(15):
        t0 = time.thread_time()
        for _ in range(args.reps):
            connection()
        best.append((time.thread_time() - t0) / args.reps * 1e6)
    best.sort()
    print(f"one connection forward + backward: {best[0]:.1f} us host (median {best[7]:.1f}), "
          f"{launches} launches; T = {args.tokens}, C = {C}, n = {n}, bf16")
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.reps):
            connection()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
