"""GPU time of each kernel of one fused mHC connection (forward + backward, identity branch,
bf16, n = 4) against its memory floor, at the two suite shapes.

For each shape this runs the connection ``--reps`` times back to back (warm caches, as in a
model) under ``torch.profiler`` and reports every kernel's mean duration, the connection's
total, and the floor: the bytes the fused design must move (``connection`` module doc:
18 C per token forward, 28 C backward) over the copy bandwidth measured on the same GPU.
``--variants`` times launch configurations side by side in the same process: a JSON object
``{name: {tuning key: {option: value}}}`` (as ``TORCH_MHC_TUNING`` takes them), each run
after the defaults (``"default"``). Writes JSON after every timing (``"partial": true`` until
the run ends).

    PYTHONPATH=src python benchmarks/connection_kernels.py --out kernels.json
    PYTHONPATH=src python benchmarks/connection_kernels.py --shapes 8192x1024 \
        --variants '{"tok_p3": {"coef_token": {"pipeline_stages": 3}}}'
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from host_overhead import _connection  # noqa: E402

from torch_mhc.bench import (_commit, _copy_bandwidth, _device_info,  # noqa: E402
                             _gpu_kernel_time, _versions)


def kernel_table(T: int, C: int, reps: int) -> dict:
    """Mean GPU microseconds per connection of each kernel, and their sum."""
    conn, _ = _connection(T, C)
    for _ in range(3):
        conn()
    total, kernels = _gpu_kernel_time(conn, torch.device("cuda"), reps, top=None)
    return {"kernels_us": kernels, "total_us": round(total, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--shapes", default="8192x1024,4096x4096", help="TxC,TxC")
    ap.add_argument("--out", default="connection_kernels.json")
    ap.add_argument("--variants", default="{}",
                    help="JSON {name: {tuning key: {option: value}}} timed after the defaults")
    args = ap.parse_args()
    try:
        variants = {"default": {}, **json.loads(args.variants)}
    except ValueError as e:
        ap.error(f"--variants is not JSON: {e}")
    from torch_mhc.ops import tuning
    bw = _copy_bandwidth(torch.device("cuda")) / 1e9  # GB/s
    out = {"suite": "connection-kernels", "device": _device_info(torch.device("cuda")),
           **_versions(), "commit": _commit(), "copy_gbs": round(bw, 1), "shapes": {},
           "variants": variants}
    for s in args.shapes.split(","):
        T, C = map(int, s.split("x"))
        floor = (18 + 28) * C * T * 2 / (bw * 1e9) * 1e6  # bf16 bytes over copy bandwidth
        for name, over in variants.items():
            tuning.TUNING.clear()
            tuning.TUNING.update(over)
            try:
                r = kernel_table(T, C, args.reps)
            except Exception as e:  # a configuration that does not compile or fit
                print(f"T={T} C={C} {name}: failed: {e!r}"[:300])
                out["shapes"][f"{s}/{name}"] = {"error": repr(e)[:300]}
                continue
            r["floor_us"] = round(floor, 1)
            r["of_floor"] = round(floor / r["total_us"], 3)
            out["shapes"][s if name == "default" else f"{s}/{name}"] = r
            print(f"T={T} C={C} {name}: {r['total_us']} us, floor {r['floor_us']} us "
                  f"({100 * r['of_floor']:.0f} %)")
            for k, v in r["kernels_us"]:
                print(f"    {v:8.2f}  {k}")
            _write(args.out, {**out, "partial": True})  # a stopped run keeps what it measured
    tuning.TUNING.clear()
    _write(args.out, out)


def _write(path: str, out: dict) -> None:
    with open(path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
