"""Where the host time of compiled mHC connections goes: cProfile of ``--depth`` connections
compiled as one graph (``torch.compile(fullgraph=True)``, Inductor default mode, kernels
traced into the graph), forward + backward, issued ``--reps`` times. Prints the issue and
wall time per connection and the top functions by own time. ``TORCH_LOGS=output_code``
shows the Inductor wrapper code around each fused kernel launch. ``--mode eager`` profiles the
same connections uncompiled (the fused ops' own Python launchers).

    PYTHONPATH=src:benchmarks python benchmarks/profile_compiled_host.py
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats

import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--T", type=int, default=8192)
    ap.add_argument("--C", type=int, default=1024)
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--top", type=int, default=45)
    ap.add_argument("--mode", default="default", choices=("default", "eager"),
                    help="torch.compile mode, or eager (default: %(default)s)")
    args = ap.parse_args()
    from host_overhead import _connection, _host_and_wall_us
    conn, _ = _connection(args.T, args.C, depth=args.depth,
                          compile_mode=None if args.mode == "eager" else args.mode)
    for _ in range(3):
        conn()
    issue, wall = _host_and_wall_us(conn, args.reps)
    print(f"per connection: issue {issue / args.depth:.0f} us, wall {wall / args.depth:.0f} us")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.reps):
        conn()
    prof.disable()
    torch.cuda.synchronize()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(args.top)
    print(s.getvalue()[-12000:])


if __name__ == "__main__":
    main()
