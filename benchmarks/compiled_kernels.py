"""Per-kernel GPU time of mHC connections in eager mode against the same connections compiled
(``torch.compile(fullgraph=True)``, kernels traced into the graph): which kernel a compiled
model runs slower. ``depth`` connections in a row (identity branches), forward + backward,
bf16, n = 4; kernel times per connection. ``--inductor key=value`` adds a third run compiled
with those ``torch._inductor.config`` settings (e.g. ``reorder_for_peak_memory=0``);
``--opaque`` one with the fused ops kept opaque (``TORCH_MHC_INLINE_KERNELS=0``: the compiled
graph calls the ops, whose own launchers start the kernels); ``--queued`` an eager run whose
kernels are all queued behind a GPU sleep first, so that they run back to back as a
compiled graph's do (eager mode is otherwise host-bound at this width, its kernels
separated by idle gaps). Writes JSON.

    PYTHONPATH=src python benchmarks/compiled_kernels.py --T 8192 --C 1024 --out k.json
"""
from __future__ import annotations

import argparse
import json

import torch

from host_overhead import _connection
from torch_mhc.ops import _library
from torch_mhc.bench import _commit, _device_info, _gpu_kernel_time, _versions


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--T", type=int, default=8192)
    ap.add_argument("--C", type=int, default=1024)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--inductor", action="append", default=[], metavar="KEY=VALUE",
                    help="torch._inductor.config setting for an extra compiled run (repeatable)")
    ap.add_argument("--opaque", action="store_true",
                    help="add a compiled run with the fused ops kept opaque")
    ap.add_argument("--queued", action="store_true",
                    help="add an eager run with every kernel queued before the GPU starts")
    ap.add_argument("--sleep-cycles", type=int, default=20_000_000,
                    help="GPU sleep before a queued run (default %(default)s, ~10 ms)")
    ap.add_argument("--out", default="compiled_kernels.json")
    args = ap.parse_args()
    options = {k: int(v) if v.lstrip("-").isdigit() else v
               for k, v in (o.split("=", 1) for o in args.inductor)}
    dev = torch.device("cuda")
    res = {"suite": "compiled-kernels", "device": _device_info(dev), **_versions(),
           "commit": _commit(), "T": args.T, "C": args.C, "depth": args.depth, "modes": {}}
    runs = [("eager", None, {}), ("default", "default", {})]
    if options:
        runs.append(("default " + ",".join(args.inductor), "default", options))
    if args.opaque:
        runs.append(("default opaque", "default", {}))
    if args.queued:
        runs.append(("eager queued", None, {}))
    for name, mode, opts in runs:
        torch._dynamo.reset()
        _library.INLINE_KERNELS = not name.endswith("opaque")
        with torch._inductor.config.patch(opts):
            conn, _ = _connection(args.T, args.C, compile_mode=mode, depth=args.depth)
            for _ in range(3):
                conn()
        if name.endswith("queued"):  # the host issues everything while the GPU sleeps
            def fn(conn=conn):
                torch.cuda._sleep(args.sleep_cycles)
                conn()
            total, kernels = _gpu_kernel_time(fn, dev, top=None)
            kernels = [(k, t) for k, t in kernels if "spin" not in k and "sleep" not in k]
            total = sum(t for _, t in kernels)  # without the sleep itself
        else:
            total, kernels = _gpu_kernel_time(conn, dev, top=None)
        res["modes"][name] = {"gpu_us": total / args.depth,
                              "kernels_us": [(k, round(t / args.depth, 1)) for k, t in kernels]}
        print(f"{name}: {total / args.depth:.1f} us per connection")
        for k, t in kernels[:12]:
            print(f"    {t / args.depth:7.1f}  {k}")
        del conn
        torch.cuda.empty_cache()
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
