"""Per-kernel GPU time of mHC connections in eager mode against the same connections compiled
(``torch.compile(fullgraph=True)``, kernels traced into the graph): which kernel a compiled
model runs slower. ``depth`` connections in a row (identity branches), forward + backward,
bf16, n = 4; kernel times per connection. ``--inductor key=value`` adds a third run compiled
with those ``torch._inductor.config`` settings (e.g. ``reorder_for_peak_memory=0``);
``--opaque`` one with the fused ops kept opaque (``TORCH_MHC_INLINE_KERNELS=0``: the compiled
graph calls the ops, whose own launchers start the kernels); ``--queued`` an eager run whose
kernels are all queued behind a GPU sleep first, so that they run back to back as a
compiled graph's do (eager mode is otherwise host-bound at this width, its kernels
separated by idle gaps). Every compiled run compiles afresh (no AOTAutograd or FX graph
cache: those key on the traced graph, not on ``_library.INLINE_KERNELS``, so an opaque run
would otherwise reuse the inlined build). ``--dump DIR`` writes, per run, how each fused
kernel was built (warps, stages, registers, spills, shared memory) and its TTGIR and PTX,
to compare a compiled graph's build of a kernel with the eager one. Writes JSON.

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
    ap.add_argument("--dump", default=None, metavar="DIR",
                    help="write each run's kernel builds (metadata, TTGIR, PTX) under DIR")
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
        fresh = {} if mode is None else {"fx_graph_cache": False}
        with torch._inductor.config.patch({**fresh, **opts}), \
                torch._functorch.config.patch(enable_autograd_cache=False):
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
        if args.dump:
            res["modes"][name]["builds"] = kernel_builds(
                args.dump, name, compiled=mode is not None and not name.endswith("opaque"))
        print(f"{name}: {total / args.depth:.1f} us per connection")
        for k, t in kernels[:12]:
            print(f"    {t / args.depth:7.1f}  {k}")
        del conn
        torch.cuda.empty_cache()
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


def _fused_lazies():
    """The fused kernels whose builds ``--dump`` records (``LazyJit`` objects)."""
    import importlib
    coefficients = importlib.import_module("torch_mhc.ops.coefficients")
    post_res = importlib.import_module("torch_mhc.ops.post_res")
    return [coefficients._coef_token, coefficients._coef_token_bwd, coefficients._coef_gemm,
            coefficients._coef_dx4, post_res._post_res_fwd, post_res._post_res_bwd]


def _eager_binaries():
    """``(name, CompiledKernel)`` for every build of the fused kernels' JIT functions."""
    for lazy in _fused_lazies():
        jit = lazy.jit(False)
        caches = getattr(jit, "device_caches", None)
        tables = ([c[0] for c in caches.values()] if caches
                  else list(getattr(jit, "cache", {}).values()))
        for table in tables:
            for binary in table.values():
                yield lazy.__name__, binary


def _inductor_modules():
    """The wrapper modules Inductor has loaded in this process."""
    from torch._inductor.codecache import PyCodeCache
    return getattr(PyCodeCache, "modules", None) or list(getattr(PyCodeCache, "cache", {}).values())


def _compiled_binaries():
    """``(name, CompiledKernel)`` for the fused kernels launched by Inductor's wrappers."""
    fused = {lazy.__name__ for lazy in _fused_lazies()}
    for mod in _inductor_modules():
        for attr in vars(mod).values():
            launchers = getattr(attr, "launchers", None)
            name = getattr(getattr(attr, "fn", None), "__name__", "")
            if launchers and name in fused:
                for launcher in launchers:
                    yield name, getattr(launcher, "bin", launcher)


def kernel_builds(out_dir, run, compiled):
    """Metadata of each build of the fused kernels in this run; TTGIR and PTX into out_dir
    (and, for a compiled run, the wrapper code: launch order, grids, argument values)."""
    import os
    import shutil
    os.makedirs(out_dir, exist_ok=True)
    tag = run.replace(" ", "_").replace(",", "_").replace("=", "")
    builds = []
    source = _compiled_binaries() if compiled else _eager_binaries()
    for i, (name, b) in enumerate(source):
        meta = getattr(b, "metadata", None)
        info = {"kernel": name}
        for key in ("num_warps", "num_stages", "shared", "maxnreg"):
            info[key] = getattr(meta, key, None)
        info["n_regs"], info["n_spills"] = getattr(b, "n_regs", None), getattr(b, "n_spills", None)
        builds.append(info)
        asm = getattr(b, "asm", {}) or {}
        for ext in ("ttgir", "ptx"):
            if ext in asm:
                with open(os.path.join(out_dir, f"{tag}.{name}.{i}.{ext}"), "w") as f:
                    f.write(asm[ext] if isinstance(asm[ext], str) else asm[ext].decode())
    if compiled:  # the wrappers that launch a fused kernel
        fused = [lazy.__name__ for lazy in _fused_lazies()]
        for j, mod in enumerate(_inductor_modules()):
            path = getattr(mod, "__file__", None)
            if path and os.path.exists(path):
                with open(path) as f:
                    code = f.read()
                if any(name in code for name in fused):
                    shutil.copy(path, os.path.join(out_dir, f"{tag}.wrapper{j}.py"))
    for info in builds:
        print("   build", info)
    return builds


if __name__ == "__main__":
    main()
