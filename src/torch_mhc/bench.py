"""``mhc bench``: what mHC costs over a plain residual model, measured in one run.

Suites (``--suite``):

* ``layer``: ``GPT`` with ``gpt_config("layer")`` (d = 4096, 4 blocks, 32 heads, sequence
  4096, micro-batch 1, SwiGLU 11008): forward + backward + AdamW step (fused, as ``mhc train``
  uses; ``--optimizer foreach`` for the multi-tensor one), median of ``--steps``
  timed steps after ``--warmup``, for the plain residual, mHC (n = 4) on our fused Triton
  kernels (also with the stream recomputed in blocks, paper Eq. 20:
  ``mhc-triton-recompute``), mHC on the PyTorch reference, and Liger-Kernel's ``LigerMHC`` when
  ``liger_kernel`` is importable (the JSON says so when it is not). Peak memory of each.
* ``gpt-small``: the same with ``gpt_config("gpt-small")``, batch 8.
* ``kernels``: each op forward and backward at T = 4096, C = 4096, Triton vs the PyTorch
  reference (and one whole connection, with Liger's for comparison), with the minimum bytes
  each must move and the achieved fraction of this card's device-to-device copy bandwidth,
  measured in the same run.

``--dtype bf16`` (default) keeps the model in bf16 (the mHC parameters ``fn, base, scale``
stay fp32, as the paper keeps ``phi``); ``autocast`` trains fp32 parameters under
``torch.autocast(bfloat16)``; ``fp32`` is plain fp32.

``--interleave`` keeps every variant's model in memory and times them in rounds (one step
each, order rotated), so slow drifts of the machine hit every variant alike; the JSON then
also holds ``paired_overhead_pct`` (median over rounds of mHC's step over the residual's).

The JSON holds ``suite, overhead_pct, peak_mem_overhead_pct, device, torch, triton, commit,
config`` (the overheads of ``overhead_of``: ``mhc-triton`` where it ran, else the first other
variant, over the residual) and one entry per variant (``median_ms``, all step times,
``peak_mem_gib``: the peak above what was allocated before its model was built). ``--out`` is
rewritten after each variant (each op of ``kernels``) with ``"partial": true``, so a run that
is stopped keeps what it measured; the finished run's JSON replaces it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional

import torch
from torch import nn

__all__ = ["register", "run_bench", "main"]

SUITES = ("layer", "gpt-small", "kernels")


# -- environment ---------------------------------------------------------------------------------

def _commit() -> str:
    """The commit measured: ``MHC_COMMIT`` if set, else git's ``HEAD`` with ``+modified``
    appended when tracked files differ from it (a copied working tree whose git metadata is
    older than its files, say), else ``"unknown"``."""
    env = os.environ.get("MHC_COMMIT")
    if env:
        return env
    root = os.path.dirname(os.path.abspath(__file__))

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    try:
        head = git("rev-parse", "HEAD")
        if not head:
            return "unknown"
        return head + ("+modified" if git("status", "--porcelain", "--untracked-files=no")
                       else "")
    except Exception:  # noqa: BLE001
        return "unknown"


def _device_info(device: torch.device) -> Dict:
    info = {"type": device.type, "host": platform.node()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(name=p.name, sm_count=p.multi_processor_count,
                    memory_gib=round(p.total_memory / 2**30, 1),
                    capability=f"{p.major}.{p.minor}")
    else:
        info["name"] = platform.processor() or "cpu"
    return info


def _versions() -> Dict:
    out = {"torch": torch.__version__, "python": platform.python_version()}
    try:
        import triton
        out["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        out["triton"] = None
    try:
        import importlib.metadata as md
        out["liger_kernel"] = md.version("liger-kernel")
    except Exception:  # noqa: BLE001
        out["liger_kernel"] = None
    return out


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- Liger-Kernel adapter ------------------------------------------------------------------------

def _liger_mhc_class():
    """``(LigerMHC, None)`` when Liger-Kernel imports, else ``(None, reason)``."""
    try:
        from liger_kernel.transformers.mhc import LigerMHC
        return LigerMHC, None
    except Exception as e:  # noqa: BLE001
        return None, f"liger_kernel not importable: {type(e).__name__}: {e}"


class _BoundBranch(nn.Module):
    """Calls the GPT branch with the extra arguments (rotary tables) of the current call."""

    def __init__(self, branch: nn.Module):
        super().__init__()
        self.branch = branch
        self.extra = ()

    def forward(self, h):
        return self.branch(h, *self.extra)


class LigerConnection(nn.Module):
    """A ``HyperConnection`` slot filled with Liger-Kernel's ``LigerMHC`` (same branch, same
    n, C, Sinkhorn iterations; Liger's own parameter layout and its default eps terms)."""

    def __init__(self, hc, liger_cls, phi_dtype):
        super().__init__()
        self.bound = _BoundBranch(hc.branch)
        self.mhc = liger_cls(self.bound, hc=hc.n, c=hc.dim, tmax=hc.sinkhorn_iters,
                             rms_eps=max(hc.rms_eps, 1e-6), phi_dtype=phi_dtype,
                             allow_fp32=phi_dtype == torch.float32)
        with torch.no_grad():
            self.mhc.phi.normal_(0, 1e-3)

    def forward(self, x, *args):
        self.bound.extra = args
        try:
            return self.mhc(x)
        finally:
            self.bound.extra = ()


# -- model step timing ---------------------------------------------------------------------------

def _build_gpt(preset: str, variant: str, args, device):
    from .models import GPT, gpt_config
    over = {}
    if args.seq:
        over["seq_len"] = args.seq
    if variant == "residual":
        cfg = gpt_config(preset, connection="residual", **over)
    else:
        backend = {"mhc-triton": "triton", "mhc-triton-recompute": "triton", "mhc-torch": "torch",
                   "liger": "torch"}[variant]
        if variant == "mhc-triton-recompute":  # stream kept every L_r connections (Eq. 20)
            over["recompute_block"] = -1
        cfg = gpt_config(preset, connection="mhc", n=args.n, backend=backend, **over)
    torch.manual_seed(0)
    model = GPT(cfg)
    with torch.no_grad():  # never time on zeros: give the dynamic part small random weights
        for hc in (model.connections() if cfg.connection == "mhc" else []):
            hc.fn.normal_(0, 1e-3)
    dtype = {"bf16": torch.bfloat16, "autocast": torch.float32, "fp32": torch.float32}[args.dtype]
    model = model.to(device=device, dtype=dtype)
    if cfg.connection == "mhc":
        for hc in model.connections():  # keep the mHC parameters in fp32 (paper: phi fp32)
            for p in (hc.fn, hc.base, hc.scale):
                p.data = p.data.float()
    if variant == "liger":
        liger_cls, why = _liger_mhc_class()
        if liger_cls is None:
            raise RuntimeError(why)
        for block in model.blocks:
            block.attn = LigerConnection(block.attn, liger_cls, dtype).to(device)
            block.mlp = LigerConnection(block.mlp, liger_cls, dtype).to(device)
    return model, cfg


def _optimizer_kind(kind: str, device) -> str:
    return "foreach" if device.type != "cuda" else kind


def make_optimizer(model: nn.Module, kind: str, device, capturable: bool = False):
    """The benchmarks' AdamW: ``kind="fused"`` (what ``mhc train`` uses on CUDA: one kernel
    per parameter dtype) or ``"foreach"`` (a few multi-tensor kernels per dtype); always
    ``foreach`` off CUDA."""
    flag = {"fused": True} if _optimizer_kind(kind, device) == "fused" else {"foreach": True}
    return torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1,
                             capturable=capturable, **flag)


def _compile_metrics() -> Dict[str, float]:
    """Seconds spent so far in each of torch.compile's timed phases (Dynamo's own table)."""
    try:
        from torch._dynamo.utils import compilation_time_metrics
    except ImportError:
        return {}
    return {k: sum(v) for k, v in compilation_time_metrics.items()}


def _compile_phases(before: Dict[str, float], after: Dict[str, float], top: int = 10) -> Dict:
    """The ``top`` phases that took longest between two :func:`_compile_metrics` snapshots,
    seconds. Phases nest (Dynamo's whole compile, then AOTAutograd, Inductor's lowering, code
    generation, the kernels' builds), and one that runs in parallel workers is summed over
    them, so a phase can exceed the wall time of the warm-up."""
    delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
    ranked = sorted((kv for kv in delta.items() if kv[1] > 0.01), key=lambda kv: -kv[1])
    return {k: round(v, 2) for k, v in ranked[:top]}


class _Trainee:
    """One benchmarked model: built, its optimizer, its batches, and ``step(i)``; warmed up
    by :meth:`warm` (which also records the peak memory of its steps)."""

    def __init__(self, preset: str, variant: str, batch: int, args, device):
        self.device, self.args = device, args
        self.base_mem = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        self.model, self.cfg = _build_gpt(preset, variant, args, device)
        T = self.cfg.seq_len
        self.graphed = bool(getattr(args, "cuda_graph", False))
        self.opt = make_optimizer(self.model, args.optimizer, device, self.graphed)
        g = torch.Generator(device="cpu").manual_seed(1)
        self.data = [(torch.randint(0, self.cfg.vocab_size, (batch, T), generator=g).to(device),
                      torch.randint(0, self.cfg.vocab_size, (batch, T), generator=g).to(device))
                     for _ in range(2)]
        self.amp = (torch.autocast(device.type, dtype=torch.bfloat16)
                    if args.dtype == "autocast" else contextlib.nullcontext())
        self.loss = None
        self.compile_mode = getattr(args, "compile", None)
        self.forward = self.model
        if self.compile_mode and getattr(args, "compile_scope", "model") == "block":
            from .models import compile_blocks
            compile_blocks(self.model, self.compile_mode, fullgraph=variant != "liger")
        elif self.compile_mode:  # the whole model in one graph where it can be (not Liger's)
            self.forward = torch.compile(self.model, mode=self.compile_mode,
                                         fullgraph=variant != "liger")

    def _eager_step(self, i):
        idx, tgt = self.data[i % 2]
        if self.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        self.opt.zero_grad(set_to_none=True)
        with self.amp:
            _, loss = self.forward(idx, tgt)
        loss.backward()
        self.opt.step()
        return loss

    def warm(self) -> None:
        """Warm-up steps (compile kernels; capture the CUDA graph with ``--cuda-graph``); the
        peak-memory counter restarts after them (before them with a graph, so that the
        peak includes the graph's pool)."""
        t0 = time.perf_counter()
        before = _compile_metrics()
        cuda = self.device.type == "cuda"
        if self.graphed:  # the peak then includes the graph's own pool
            torch.cuda.reset_peak_memory_stats(self.device)
            self.step = _graphed_step(self.model, self.opt, self.data, self.amp, self.args.warmup)
        else:
            self.step = self._eager_step
        for i in range(self.args.warmup):
            self.loss = self.step(i)
        _sync(self.device)
        self.warm_s = time.perf_counter() - t0
        self.compile_phases = _compile_phases(before, _compile_metrics())
        if cuda and not self.graphed:
            torch.cuda.reset_peak_memory_stats(self.device)

    def timed_step(self, i: int) -> float:
        """One step in milliseconds (CUDA events on a GPU, the host clock elsewhere)."""
        if self.device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            self.loss = self.step(i)
            b.record()
            b.synchronize()
            return a.elapsed_time(b)
        t0 = time.perf_counter()
        self.loss = self.step(i)
        return (time.perf_counter() - t0) * 1e3

    def peak_gib(self) -> Optional[float]:
        """Peak memory since :meth:`warm`'s restart of the counter, minus what was allocated
        before this model was built, GiB; None off CUDA."""
        if self.device.type != "cuda":
            return None
        return (torch.cuda.max_memory_allocated(self.device) - self.base_mem) / 2**30

    def result(self, times: List[float], peak: Optional[float]) -> Dict:
        """The variant's entry of the JSON (``peak``: :meth:`peak_gib` taken when due)."""
        return {"median_ms": statistics.median(times), "min_ms": min(times), "times_ms": times,
                "peak_mem_gib": peak, "loss": float(self.loss.detach()),
                "warmup_s": self.warm_s,
                **({"compile_phases_s": self.compile_phases} if self.compile_phases else {}),
                "params_m": sum(p.numel() for p in self.model.parameters()) / 1e6}

    def free(self) -> None:
        """Drop the model, optimizer and batches."""
        del self.model, self.opt, self.data, self.step
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _time_model(preset: str, variant: str, batch: int, args, device) -> Dict:
    run = _Trainee(preset, variant, batch, args, device)
    run.warm()
    times = [run.timed_step(i) for i in range(args.steps)]
    res = run.result(times, run.peak_gib())
    run.free()
    return res


def _time_interleaved(preset: str, variants: List[str], batch: int, args, device) -> Dict:
    """``--interleave``: all variants built and warmed up (each one's peak memory taken over
    one step after its warm-up, above what the models built before it hold), then
    ``--steps`` rounds of one timed step per variant, the order rotated every round. Slow
    drifts of the machine (clocks, temperature, host load) then hit every variant alike;
    ``paired_overhead_pct`` is the median over rounds of each round's ratio to the residual
    step."""
    runs, peaks = {}, {}
    for v in variants:
        run = runs[v] = _Trainee(preset, v, batch, args, device)
        run.warm()
        run.timed_step(args.warmup)  # one more step: this model's peak, others resident
        peaks[v] = run.peak_gib()
    times = {v: [] for v in variants}
    for r in range(args.steps):
        k = r % len(variants)
        for v in variants[k:] + variants[:k]:
            times[v].append(runs[v].timed_step(r))
    out = {}
    for v, run in runs.items():
        out[v] = run.result(times[v], peaks[v])
        if "residual" in times and v != "residual":
            ratios = [a / b for a, b in zip(times[v], times["residual"])]
            out[v]["paired_overhead_pct"] = 100.0 * (statistics.median(ratios) - 1.0)
    for run in runs.values():
        run.free()
    return out


def _graphed_step(model, opt, data, amp, warmup: int):
    """Capture zero_grad + forward + backward + AdamW(capturable) in one CUDA graph (after
    warm-up steps on a side stream, PyTorch's whole-network recipe) and return a step that
    copies the batch into the static inputs and replays it: no host launch overhead."""
    static_idx, static_tgt = (t.clone() for t in data[0])

    def eager():
        with amp:
            _, loss = model(static_idx, static_tgt)
        loss.backward()
        opt.step()
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(max(3, warmup)):
            opt.zero_grad(set_to_none=True)
            eager()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = eager()

    def step(i):
        idx, tgt = data[i % 2]
        static_idx.copy_(idx)
        static_tgt.copy_(tgt)
        graph.replay()
        return static_loss
    return step


def _model_suite(suite: str, args, device, save=None) -> Dict:
    preset = args.preset or suite
    batch = args.batch or (1 if suite == "layer" else 8)
    variants = list(VARIANTS)
    if args.variants:
        variants = [v for v in args.variants.split(",") if v]
    elif getattr(args, "compile", None) and getattr(args, "compile_scope", "model") == "block":
        variants.remove("mhc-triton-recompute")  # its recomputation spans blocks
    out: Dict = {"variants": {}}
    liger_cls, why = _liger_mhc_class()
    if liger_cls is None:
        out["liger"] = why
    runnable = []
    for v in variants:
        if v == "liger" and liger_cls is None:
            out["variants"][v] = {"skipped": why}
        elif v.startswith("mhc-triton") and device.type != "cuda":
            out["variants"][v] = {"skipped": "needs CUDA"}
        else:
            runnable.append(v)
    if getattr(args, "interleave", False):
        try:
            out["variants"].update(_time_interleaved(preset, runnable, batch, args, device))
        except Exception as e:  # noqa: BLE001  (e.g. all models do not fit at once)
            err = {"error": f"interleaved: {type(e).__name__}: {e}"[:2000]}
            out["variants"].update({v: dict(err) for v in runnable})
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for v in runnable:
        if v not in out["variants"]:
            try:
                r = _time_model(preset, v, batch, args, device)
            except Exception as e:  # noqa: BLE001  (record it, keep measuring the others)
                r = {"error": f"{type(e).__name__}: {e}"[:2000]}
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            out["variants"][v] = r
            if save:
                save({"suite": suite, "variants": out["variants"]})
        r = out["variants"][v]
        _log(f"  {suite} {v}: " + (f"{r['median_ms']:.2f} ms, peak {r['peak_mem_gib']} GiB"
                                   if "median_ms" in r else str(r)))
    base = out["variants"].get("residual", {})
    for v, r in out["variants"].items():
        if "median_ms" in r and "median_ms" in base:
            r["overhead_pct"] = 100.0 * (r["median_ms"] / base["median_ms"] - 1.0)
            if r.get("peak_mem_gib") and base.get("peak_mem_gib"):
                r["peak_mem_overhead_pct"] = 100.0 * (r["peak_mem_gib"] / base["peak_mem_gib"] - 1.0)
    # the headline: the fused kernels, else the first other variant measured
    headline = next((v for v in ("mhc-triton", *out["variants"]) if v != "residual"
                     and v in out["variants"]), None)
    ours = out["variants"].get(headline, {})
    out["compiled"] = bool(getattr(args, "compile", None))
    out["overhead_of"] = headline
    out["overhead_pct"] = ours.get("overhead_pct")
    out["peak_mem_overhead_pct"] = ours.get("peak_mem_overhead_pct")
    if "paired_overhead_pct" in ours:
        out["paired_overhead_pct"] = ours["paired_overhead_pct"]
    out["config"] = {"preset": preset, "batch": batch, "n": args.n, "dtype": args.dtype,
                     "steps": args.steps, "warmup": args.warmup,
                     "optimizer": f"AdamW({_optimizer_kind(args.optimizer, device)})",
                     "cuda_graph": bool(getattr(args, "cuda_graph", False)),
                     "compile": getattr(args, "compile", None),
                     "compile_scope": (getattr(args, "compile_scope", "model")
                                       if getattr(args, "compile", None) else None),
                     "seq_len": args.seq or None,
                     "interleave": bool(getattr(args, "interleave", False)),
                     "timing": ("CUDA events" if device.type == "cuda" else "host clock")
                               + " around zero_grad+forward+backward+step, median"
                               + (" of rounds with one step per variant, order rotated"
                                  if getattr(args, "interleave", False) else "")}
    return out


# -- kernels suite -------------------------------------------------------------------------------

def _bench_ms(fn, device, reps: int = 50) -> float:
    """Median milliseconds of ``fn()``; on CUDA through ``triton.testing.do_bench`` (events,
    L2 flushed between runs), on CPU a host clock."""
    if device.type == "cuda":
        from triton.testing import do_bench
        return float(do_bench(fn, warmup=25, rep=max(reps, 20), return_mode="median"))
    fn()
    ts = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def _gpu_kernel_time(fn, device, reps: int = 3, top: Optional[int] = 8):
    """GPU time of one ``fn()`` as the sum of its kernels' durations (torch.profiler), with the
    ``top`` largest kernels (all for ``None``): excludes the host-side gaps that ``_bench_ms``
    sees when launching is slower than the GPU work (small ops outside a model)."""
    if device.type != "cuda":
        return None, []
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize(device)
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "self_device_time_total", None)
        if t is None:
            t = getattr(e, "self_cuda_time_total", 0.0)
        if t and t > 0:
            rows.append((e.key[:80], t / reps))
    rows.sort(key=lambda r: -r[1])
    return sum(t for _, t in rows), [(k, round(t, 1)) for k, t in rows[:top]]


def _copy_bandwidth(device) -> Optional[float]:
    """Device-to-device copy bandwidth in bytes/s (bytes read + bytes written)."""
    if device.type != "cuda":
        return None
    a = torch.empty(2**30 // 2, dtype=torch.bfloat16, device=device).normal_()
    b = torch.empty_like(a)
    ms = _bench_ms(lambda: b.copy_(a), device)
    bw = 2 * a.numel() * a.element_size() / (ms * 1e-3)
    del a, b
    torch.cuda.empty_cache()
    return bw


def _kernels_suite(args, device, save=None) -> Dict:
    from .ops.coefficients import mhc_coefficients
    from .ops.connection import connection_post, connection_pre
    from .ops.post_res import post_res
    from .ops.pre_mix import pre_mix

    n = args.n
    T = args.tokens
    C = args.C
    dt = {"bf16": torch.bfloat16, "autocast": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    es = torch.tensor([], dtype=dt).element_size()
    N = (n + 2) * n
    K = n * C
    bw = _copy_bandwidth(device)
    g = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*shape, dtype=dt, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    x = rnd(T, n, C).requires_grad_()
    y = rnd(T, C).requires_grad_()
    fn = rnd(N, K, dtype=torch.float32, scale=0.02).requires_grad_()
    base = rnd(N, dtype=torch.float32).requires_grad_()
    scale = (torch.rand(3, generator=g) + 0.5).to(device).requires_grad_()
    h_pre = torch.rand(T, n, generator=g).to(device).requires_grad_()
    h_post = (2 * torch.rand(T, n, generator=g)).to(device).requires_grad_()
    h_res = torch.rand(T, n, n, generator=g).to(device).requires_grad_()
    stream = T * C * es  # bytes of one C-wide activation

    def conn(backend):
        if backend == "triton":
            def f():
                h, hp, hq, hr, link = connection_pre(x, fn, base, scale)
                return connection_post(x, h, hq, hr, link)  # branch = identity
        else:
            def f():
                hp, hq, hr = mhc_coefficients(x, fn, base, scale, backend="torch")
                h = pre_mix(x, hp, backend="torch")
                return post_res(x, h, hq, hr, backend="torch")
        return f

    # (name, fwd callable factory(backend), grad inputs, min bytes fwd, min bytes bwd)
    ops = [
        ("coefficients", lambda b: (lambda: mhc_coefficients(x, fn, base, scale, backend=b)),
         [x, fn, base, scale], n * stream + N * K * 4,
         2 * n * stream + 2 * N * K * 4),
        ("pre_mix", lambda b: (lambda: pre_mix(x, h_pre, backend=b)), [x, h_pre],
         (n + 1) * stream, (2 * n + 1) * stream),
        ("post_res", lambda b: (lambda: post_res(x, y, h_post, h_res, backend=b)),
         [x, y, h_post, h_res], (2 * n + 1) * stream, (3 * n + 2) * stream),
        ("connection", conn, [x, fn, base, scale],
         (4 * n + 2) * stream + N * K * 4, (6 * n + 4) * stream + 2 * N * K * 4),
    ]
    rows = []
    backends = ["triton", "torch"] if device.type == "cuda" else ["torch"]
    for name, make, inputs, b_fwd, b_bwd in ops:
        for backend in backends:
            row = {"op": name, "impl": backend, "min_bytes_fwd": b_fwd, "min_bytes_bwd": b_bwd}
            try:
                f = make(backend)
                with torch.no_grad():
                    row["fwd_us"] = 1e3 * _bench_ms(f, device)
                out = f()
                outs = out if isinstance(out, tuple) else (out,)
                grads = [torch.randn_like(o) for o in outs]

                def bwd():
                    torch.autograd.grad(outs, inputs, grads, retain_graph=True, allow_unused=True)
                row["bwd_us"] = 1e3 * _bench_ms(bwd, device)
                del out, outs, grads
                row["fwd_bwd_us"] = row["fwd_us"] + row["bwd_us"]
                with torch.no_grad():
                    row["fwd_gpu_us"], row["fwd_kernels"] = _gpu_kernel_time(f, device)
                out = f()
                outs = out if isinstance(out, tuple) else (out,)
                grads = [torch.randn_like(o) for o in outs]
                row["bwd_gpu_us"], row["bwd_kernels"] = _gpu_kernel_time(bwd, device)
                del out, outs, grads
                if bw and row["fwd_gpu_us"]:
                    row["fwd_gpu_pct_copy_bw"] = 100 * b_fwd / (row["fwd_gpu_us"] * 1e-6) / bw
                    row["bwd_gpu_pct_copy_bw"] = 100 * b_bwd / (row["bwd_gpu_us"] * 1e-6) / bw
                if bw:
                    row["fwd_pct_copy_bw"] = 100 * b_fwd / (row["fwd_us"] * 1e-6) / bw
                    row["bwd_pct_copy_bw"] = 100 * b_bwd / (row["bwd_us"] * 1e-6) / bw
                    row["fwd_TBps"] = b_fwd / (row["fwd_us"] * 1e-6) / 1e12
                    row["bwd_TBps"] = b_bwd / (row["bwd_us"] * 1e-6) / 1e12
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{type(e).__name__}: {e}"[:1000]
            rows.append(row)
            if save:
                save({"suite": "kernels", "rows": rows})
            _log("  kernels " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in row.items()
                                         if "bytes" not in k and "kernels" not in k))
    liger_cls, why = _liger_mhc_class()
    liger_row = {"op": "connection", "impl": "liger"}
    if liger_cls is not None and device.type == "cuda":
        try:
            m = liger_cls(nn.Identity(), hc=n, c=C, tmax=20, phi_dtype=dt,
                          allow_fp32=dt == torch.float32).to(device)
            with torch.no_grad():
                m.phi.normal_(0, 0.02)
            with torch.no_grad():
                liger_row["fwd_us"] = 1e3 * _bench_ms(lambda: m(x), device)
            out = m(x)
            go = torch.randn_like(out)
            ins = [x] + list(m.parameters())
            liger_row["bwd_us"] = 1e3 * _bench_ms(
                lambda: torch.autograd.grad(out, ins, go, retain_graph=True), device)
            liger_row["fwd_bwd_us"] = liger_row["fwd_us"] + liger_row["bwd_us"]
            with torch.no_grad():
                liger_row["fwd_gpu_us"], liger_row["fwd_kernels"] = _gpu_kernel_time(lambda: m(x), device)
            liger_row["bwd_gpu_us"], liger_row["bwd_kernels"] = _gpu_kernel_time(
                lambda: torch.autograd.grad(out, ins, go, retain_graph=True), device)
        except Exception as e:  # noqa: BLE001
            liger_row["error"] = f"{type(e).__name__}: {e}"[:1000]
    else:
        liger_row["skipped"] = why or "needs CUDA"
    rows.append(liger_row)
    _log(f"  kernels liger connection: {liger_row}")
    ours = {r["op"]: r for r in rows if r.get("impl") == "triton"}
    out = {"copy_bandwidth_TBps": bw / 1e12 if bw else None, "rows": rows,
           "config": {"tokens": T, "C": C, "n": n, "dtype": str(dt).replace("torch.", ""),
                      "timing": "fwd_us/bwd_us: triton.testing.do_bench median (L2 flushed), "
                                "includes host launch gaps; *_gpu_us: sum of kernel durations "
                                "(torch.profiler), the GPU work alone",
                      "bytes": "minimum: every input read once, every output written once"}}
    c = ours.get("connection", {})
    if "fwd_bwd_us" in c:
        # one connection's share of a step: no residual step in this suite; report vs copy bw
        out["connection_fwd_bwd_us"] = c["fwd_bwd_us"]
    out["overhead_pct"] = None
    out["peak_mem_overhead_pct"] = None
    return out


# -- entry points --------------------------------------------------------------------------------

def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_bench(args, save=None) -> Dict:
    """Run one suite and return its JSON-ready dict. ``save(partial)``, if given, is called
    with what has been measured so far after each variant (each op of ``kernels``)."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    t0 = time.time()
    if args.suite == "kernels":
        res = _kernels_suite(args, device, save)
    else:
        res = _model_suite(args.suite, args, device, save)
    v = _versions()
    from .ops.tuning import TUNING
    res.update(suite=args.suite, device=_device_info(device), torch=v["torch"],
               triton=v["triton"], liger_kernel=v["liger_kernel"], commit=_commit(),
               wall_s=round(time.time() - t0, 1),
               # launch configurations that replaced the built-in ones (TORCH_MHC_TUNING)
               tuning=dict(TUNING) or None)
    order = ["suite", "compiled", "overhead_pct", "overhead_of", "peak_mem_overhead_pct",
             "device", "torch", "triton", "liger_kernel", "commit", "config"]
    return {**{k: res[k] for k in order if k in res}, **{k: v for k, v in res.items() if k not in order}}


VARIANTS = ("residual", "mhc-triton", "mhc-triton-recompute", "mhc-torch", "liger")


def _check_args(args) -> Optional[str]:
    """What is wrong with the arguments (checked before any timing), or None."""
    from .models import GPT_PRESETS
    for name, low in (("n", 1), ("steps", 1), ("warmup", 0), ("tokens", 1), ("C", 1),
                      ("batch", 1), ("seq", 1)):
        v = getattr(args, name)
        if v is not None and v < low:
            return f"--{name} must be >= {low}, got {v}"
    if args.variants is not None:
        bad = [v for v in args.variants.split(",") if v and v not in VARIANTS]
        if bad or not any(args.variants.split(",")):
            return (f"unknown variant(s) {', '.join(bad) or repr(args.variants)}; choose from "
                    f"{','.join(VARIANTS)}")
    if args.preset is not None and args.preset not in GPT_PRESETS:
        return f"unknown --preset {args.preset!r}; choose one of {', '.join(GPT_PRESETS)}"
    if args.device is not None:
        try:
            device = torch.device(args.device)
        except RuntimeError:
            return f"unknown --device {args.device!r}; use cuda, cuda:N or cpu"
        if device.type == "cuda" and not torch.cuda.is_available():
            return f"--device {args.device}: CUDA is not available here"
    elif not torch.cuda.is_available():
        return ("no CUDA device here, and the suites are sized for one (the layer suite takes "
                "minutes per step on a CPU); to run on the CPU anyway pass --device cpu, "
                "e.g. with --preset tiny --seq 128 for a quick check")
    if getattr(args, "compile", None) and getattr(args, "cuda_graph", False):
        return "--compile and --cuda-graph are exclusive (use --compile reduce-overhead)"
    if getattr(args, "compile", None) and args.suite == "kernels":
        return "--compile applies to the layer and gpt-small suites"
    if getattr(args, "compile_scope", "model") != "model":
        if not getattr(args, "compile", None):
            return "--compile-scope needs --compile"
        if "mhc-triton-recompute" in (args.variants or "").split(","):
            return ("--compile-scope block: stream recomputation spans blocks; time "
                    "mhc-triton-recompute with --compile-scope model")
    if getattr(args, "cuda_graph", False):
        if not torch.cuda.is_available() or (args.device and torch.device(args.device).type != "cuda"):
            return "--cuda-graph needs a CUDA device"
    if getattr(args, "interleave", False) and args.suite == "kernels":
        return "--interleave applies to the layer and gpt-small suites"
    if args.out:
        if os.path.isdir(args.out):
            return f"--out {args.out} is a folder; give the path of the JSON file to write"
        try:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        except OSError as e:
            return f"cannot create the folder of --out {args.out}: {e.strerror or e}"
    return None


def _write_json(path: str, obj: Dict) -> None:
    """Write ``obj`` to ``path`` whole or not at all (a temporary file renamed over it)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(obj, indent=2, default=float) + "\n")
    os.replace(tmp, path)


def _plan(args) -> str:
    """One line: what this run is about to time, and where."""
    device = torch.device(args.device or "cuda")
    if args.suite == "kernels":
        what = f"each op at T = {args.tokens}, C = {args.C}, n = {args.n}"
    else:
        from .models import GPT_PRESETS
        preset = args.preset or args.suite
        shape = GPT_PRESETS[preset]
        what = (f"preset {preset} (d {shape['d_model']}, {shape['n_layer']} blocks, seq "
                f"{args.seq or shape['seq_len']}), {args.warmup} warm-up + {args.steps} timed "
                f"steps of variants {args.variants or ','.join(VARIANTS)}")
    line = f"mhc bench: {args.suite} suite on {device}: {what}; a line per result as it comes"
    if device.type == "cpu":
        line += ("; on the CPU the Triton variants are skipped and GPU-sized shapes take "
                 "minutes per step")
    return line


def _cmd(args) -> int:
    problem = _check_args(args)
    if problem:
        print(f"mhc bench: error: {problem}", file=sys.stderr)
        return 2
    _log(_plan(args))
    save = None
    if args.out:
        commit = _commit()

        def save(partial):  # an interrupted run keeps what it measured
            try:
                _write_json(args.out, {**partial, "partial": True, "commit": commit})
            except OSError:
                pass
    res = run_bench(args, save)
    text = json.dumps(res, indent=2, default=float)
    if args.out:
        try:
            _write_json(args.out, res)
        except OSError as e:  # keep the measurements: print them instead
            print(text)
            print(f"mhc bench: error: cannot write {args.out}: {e.strerror or e}; the JSON "
                  "is printed above", file=sys.stderr)
            return 1
    print(json.dumps({k: res.get(k) for k in ("suite", "overhead_pct", "peak_mem_overhead_pct")}))
    return 0


DESCRIPTION = ("Time what mHC costs over the plain residual model, all variants in one run: "
               "a training step (forward + backward + AdamW) of a GPT per variant, or each "
               "mHC op alone. Prints a one-line summary; the full JSON goes to --out. Meant "
               "for a GPU; on a CPU it runs only with --device cpu.")

EPILOG = """suites (--suite):
  layer      GPT d 4096, 4 blocks, 32 heads, seq 4096, batch 1, SwiGLU 11008
  gpt-small  GPT d 1024, 12 blocks, 16 heads, seq 1024, batch 8
  kernels    each op forward and backward at T = C = 4096 (--tokens, --C), Triton vs
             the PyTorch reference, with the share of this GPU's copy bandwidth

variants (--variants): residual (the baseline), mhc-triton (fused kernels),
  mhc-triton-recompute (stream recomputed in blocks, paper Eq. 20), mhc-torch (the
  PyTorch reference), liger (Liger-Kernel's LigerMHC, when liger_kernel imports)

examples:
  mhc bench --suite layer --out layer.json             # one GPU
  mhc bench --suite layer --interleave --steps 30      # drift-robust paired overhead
  mhc bench --suite kernels --out kernels.json
  mhc bench --device cpu --preset tiny --seq 128 --variants residual,mhc-torch
                                                       # a quick check on a CPU

the JSON (--out) holds overhead_pct, peak_mem_overhead_pct, device, versions, commit,
config and per variant median_ms, every step time and peak_mem_gib; it is rewritten
after each variant, marked "partial", so an interrupted run keeps what it measured.
"""


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", choices=SUITES, default="layer",
                   help="what to time: layer, gpt-small or kernels (default: %(default)s)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="write the full JSON here (default: only the summary line is printed)")
    p.add_argument("--steps", type=int, default=10, metavar="N",
                   help="timed steps per variant; the median is reported (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=3, metavar="N",
                   help="untimed steps first, to compile kernels (default: %(default)s)")
    p.add_argument("--n", type=int, default=4, metavar="N",
                   help="residual streams of mHC (default: %(default)s)")
    p.add_argument("--dtype", choices=("bf16", "autocast", "fp32"), default="bf16",
                   help="bf16: model in bf16 (mHC parameters fp32); autocast: fp32 parameters "
                        "under bf16 autocast; fp32 (default: %(default)s)")
    p.add_argument("--optimizer", choices=("fused", "foreach"), default="fused",
                   help="AdamW implementation on CUDA, as mhc train uses: fused, or foreach "
                        "(default: %(default)s)")
    p.add_argument("--variants", default=None, metavar="LIST",
                   help=f"comma-separated subset of {','.join(VARIANTS)} (default: all)")
    from .models import GPT_PRESETS
    p.add_argument("--preset", default=None, metavar="NAME",
                   help=f"GPT preset instead of the suite's own: {', '.join(GPT_PRESETS)} "
                        "(default: the suite's)")
    p.add_argument("--batch", type=int, default=None, metavar="N",
                   help="sequences per step (default: 1 for layer, 8 for gpt-small)")
    p.add_argument("--seq", type=int, default=None, metavar="N",
                   help="sequence length (default: the preset's)")
    p.add_argument("--tokens", type=int, default=4096, metavar="N",
                   help="kernels suite: tokens T (default: %(default)s)")
    p.add_argument("--C", type=int, default=4096, metavar="N",
                   help="kernels suite: stream width C (default: %(default)s)")
    p.add_argument("--device", default=None, metavar="DEVICE",
                   help="cuda, cuda:N or cpu (default: cuda; without a GPU, --device cpu "
                        "must be given)")
    p.add_argument("--interleave", action="store_true",
                   help="layer/gpt-small: keep every variant's model in memory and time them in "
                        "rounds (one step each, order rotated), so machine drift hits all alike; "
                        "adds paired_overhead_pct (median of per-round ratios)")
    p.add_argument("--compile", nargs="?", const="default", default=None,
                   choices=("default", "reduce-overhead", "max-autotune-no-cudagraphs"),
                   help="layer/gpt-small: torch.compile every variant's model (whole graph; "
                        "the fused mHC ops are custom ops inside it) with this mode "
                        "(default: default) and time the compiled steps; overhead_pct is then "
                        "compiled mHC over compiled residual")
    p.add_argument("--compile-scope", choices=("model", "block"), default="model",
                   help="with --compile: model (the whole model as one graph) or block (each "
                        "transformer block compiled on its own, the compiled code shared by "
                        "the others: less compile time; the default variants then leave out "
                        "mhc-triton-recompute, whose recomputation spans blocks) "
                        "(default: %(default)s)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="layer/gpt-small: capture each training step in one CUDA graph and time "
                        "its replays (removes the host launch overhead that small models pay)")


def _parser_kwargs() -> Dict:
    """Description, epilog and formatter shared by ``mhc bench`` and ``python -m``: the
    same layout as ``mhc train`` (wrapped description, examples kept as written)."""
    import textwrap
    return dict(description=textwrap.fill(DESCRIPTION, width=80), epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)


def register(subparsers) -> None:
    """Add ``mhc bench`` to the ``mhc`` command."""
    p = subparsers.add_parser("bench", help="time mHC against the plain residual (GPU)",
                              **_parser_kwargs())
    _add_args(p)
    p.set_defaults(func=_cmd)


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m torch_mhc.bench``."""
    p = argparse.ArgumentParser(prog="mhc bench", **_parser_kwargs())
    _add_args(p)
    return _cmd(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
