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
    PYTHONPATH=src python benchmarks/connection_kernels.py --shapes 8192x1024 --chain \
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


def kernel_table(T: int, C: int, reps: int, chain: bool = False) -> dict:
    """Mean GPU microseconds per connection of each kernel, and their sum (``chain``: the
    connection in a chain, its post-res computing the next one's projection)."""
    conn, _ = _connection(T, C, chain=chain)
    for _ in range(3):
        conn()
    total, kernels = _gpu_kernel_time(conn, torch.device("cuda"), reps, top=None)
    return {"kernels_us": kernels, "total_us": round(total, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--shapes", default="8192x1024,4096x4096", help="TxC,TxC")
    ap.add_argument("--out", default="connection_kernels.json")
    ap.add_argument("--chain", action="store_true",
                    help="also time each variant as a chained connection (its post-res "
                         "computes the next connection's projection)")
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
        for name, over in variants.items():
            for chain in (False, True) if args.chain else (False,):
                # bf16 bytes over copy bandwidth; a chained connection reads x n times fewer
                floor = (18 - 4 * chain + 28) * C * T * 2 / (bw * 1e9) * 1e6
                key = s + ("" if name == "default" else f"/{name}") + ("/chain" if chain else "")
                tuning.TUNING.clear()
                tuning.TUNING.update(over)
                try:
                    r = kernel_table(T, C, args.reps, chain)
                except Exception as e:  # a configuration that does not compile or fit
                    print(f"{key}: failed: {e!r}"[:300])
                    out["shapes"][key] = {"error": repr(e)[:300]}
                    continue
                r["floor_us"] = round(floor, 1)
                r["of_floor"] = round(floor / r["total_us"], 3)
                out["shapes"][key] = r
                print(f"{key}: {r['total_us']} us, floor {r['floor_us']} us "
                      f"({100 * r['of_floor']:.0f} %)")
                for k, v in r["kernels_us"]:
                    print(f"    {v:8.2f}  {k}")
                _write(args.out, {**out, "partial": True})  # a stopped run keeps its results
    tuning.TUNING.clear()
    _write(args.out, out)


def _write(path: str, out: dict) -> None:
    with open(path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
