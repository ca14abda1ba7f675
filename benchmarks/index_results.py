"""Write ``benchmarks/results/INDEX.md``: one row per result (file, suite, GPU, date, commit, what it shows).

Every entry of ``benchmarks/results`` is named ``<suite>_<gpu>_<date>_<commit7>[_<variant>]``
(a ``.json`` or ``.txt`` file, or a folder of one run's logs): the suite has no underscore,
the date is the day the result was recorded, and the commit is the one the JSON names as
measured (its ``commit`` field) or, for a file without one, the commit that recorded it.
The one-line summary is read from the file itself (overheads, per-op times, sweep winners),
followed by what the variant tag means where that is not in the file.

    python benchmarks/index_results.py            # rewrite INDEX.md
    python benchmarks/index_results.py --check    # exit 1 if INDEX.md is stale or a name is off
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

RESULTS = Path(__file__).resolve().parent / "results"
INDEX = RESULTS / "INDEX.md"
NAME = re.compile(r"^(?P<suite>[a-z0-9-]+)_(?P<gpu>h100|h200|h200x2|cpu)_(?P<date>\d{4}-\d\d-\d\d)_"
                  r"(?P<commit>[0-9a-f]{7})(?:_(?P<variant>[A-Za-z0-9_-]+))?$")
GPUS = {"h100": "H100 80GB", "h200": "H200", "h200x2": "2x H200", "cpu": "CPU (2 cores)"}

#: What a variant tag means, where the file does not say it (matched on the tag's words).
VARIANT_NOTES = {
    "static0": "Inductor's static launcher for user-defined Triton kernels off (the default)",
    "static1": "Inductor's static launcher for user-defined Triton kernels on "
               "(`TORCHINDUCTOR_STATIC_LAUNCH_USER_DEFINED_TRITON_KERNELS=1`)",
    "phase-split": "token kernels with `phase_split` (odd programs: Sinkhorn first) against the defaults",
    "cudagraph": "whole step captured in one CUDA graph (`--cuda-graph`)",
    "interleaved": "`--interleave`: every variant resident, rounds of one step each",
    "sequential": "variants one after the other (no `--interleave`), same day as the interleaved runs",
    "full": "every variant (residual, ours, stream recompute, Liger, PyTorch reference)",
    "liger": "Liger-Kernel's LigerMHC resident in the same run",
    "repeat": "a repeat of the same code",
    "defaults": "built-in launch defaults, no tuning file",
    "foreach": "multi-tensor (foreach) AdamW instead of fused",
    "fused": "fused AdamW, the default",
    "final": "the final kernels of 2026-12-01 (G^T loaded as such)",
    "ab_gtl": "A/B, G^T load on (`TORCH_MHC_TUNING`), alternating with `ab_default`",
    "ab_default": "A/B, G^T load off (the dx pass of commit 4eac8dc), alternating with `ab_gtl`",
    "before": "the kernels of commit 825935a, run alternately with the new ones of the day",
    "order": "launch order for L2 reuse (A/B against `order_before`)",
    "order_before": "A/B for the launch order: the kernels of commit 825935a, alternating with `order`",
    "before_order": "profile A/B for the launch order: the kernels of commit 825935a",
    "ab_after": "profile A/B: broadcast reads + launch order",
    "ab_before": "profile A/B: the kernels before them",
    "gaps": "profile with GPU idle gaps (`gpu_gaps`)",
    "chain": "dropped experiment: fusing across connections (see NOTES.md)",
    "tokenprefetch": "dropped experiment: per-token kernels with early loads (see NOTES.md)",
    "token_per_lane": "dropped experiment: one token per lane in the per-token kernels",
    "post_res_proj": "dropped experiment: post-res forward computing the next GEMM",
    "dfp1": "dfn from the bf16 high part of G alone",
    "dx4t": "dropped experiment: channel-major dx kernel",
    "gtl": "dx pass: G^T loaded as such vs transposed in registers, maxnreg",
    "dx4": "dx pass configurations",
    "gemm_dx4": "coefficient GEMM and dx pass configurations",
    "compiled": "`mhc bench --compile` (torch.compile)",
    "compiled-reduce-overhead": "`mhc bench --compile reduce-overhead` (CUDA graphs)",
    "opaque-ops": "fused ops opaque to the compiler (each call runs its Python launcher)",
    "before-host-trims": "before the host-side trims of commit 7d6b352",
    "eager-interleaved": "eager, `--interleave`",
    "all_runs": "every layer overhead of the day with its commit and kernels",
}


def parse(name: str) -> Optional[Dict[str, str]]:
    """The fields of a result's name, or None when it does not follow the scheme."""
    stem = name[:-len(Path(name).suffix)] if Path(name).suffix in (".json", ".txt") else name
    m = NAME.match(stem)
    return m.groupdict() if m else None


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:+.1f} %"


def _step(d: Dict[str, Any]) -> str:
    v = {k: x for k, x in d.get("variants", {}).items() if isinstance(x, dict) and "median_ms" in x}
    if "residual" not in v:  # one variant alone (its reference in another file)
        return ", ".join(f"{k} {x['median_ms']:.2f} ms" for k, x in v.items())
    parts = [f"residual {v['residual']['median_ms']:.1f} ms"]
    for k in ("mhc-triton", "mhc-triton-recompute", "mhc-triton-nochain", "liger", "mhc-torch"):
        if k in v and v[k].get("overhead_pct") is not None:
            parts.append(f"{k} {_pct(v[k]['overhead_pct'])}")
    if d.get("peak_mem_overhead_pct") is not None:
        parts.append(f"mem {_pct(d['peak_mem_overhead_pct'])}")
    paired = v.get("mhc-triton", {}).get("paired_overhead_pct")
    if paired is not None:
        parts.append(f"paired {_pct(paired)}")
    cfg = d.get("config", {})
    flags = [f for f, on in (("compiled", d.get("compiled")), ("CUDA graph", cfg.get("cuda_graph")),
                             (str(cfg.get("optimizer", "")), "foreach" in str(cfg.get("optimizer", ""))))
             if on]
    return ", ".join(parts) + (f" ({', '.join(flags)})" if flags else "")


def _kernels(d: Dict[str, Any]) -> str:
    rows = {(r["op"], r["impl"]): r for r in d.get("rows", []) if "fwd_gpu_us" in r}
    c = rows.get(("connection", "triton"))
    out = [f"copy {d['copy_bandwidth_TBps']:.2f} TB/s"] if d.get("copy_bandwidth_TBps") else []
    if c:
        out.append(f"connection fwd {c['fwd_gpu_us']:.0f} us ({c.get('fwd_gpu_pct_copy_bw', 0):.0f} %), "
                   f"bwd {c['bwd_gpu_us']:.0f} us ({c.get('bwd_gpu_pct_copy_bw', 0):.0f} %) GPU")
    lig = rows.get(("connection", "liger"))
    if lig:
        out.append(f"Liger {lig['fwd_gpu_us'] + lig['bwd_gpu_us']:.0f} us")
    return "per-op GPU time: " + ", ".join(out)


def _sweep(d: Dict[str, Any]) -> str:
    keys = [k for k, v in d.items() if isinstance(v, dict) and "best_us" in v]
    best = ", ".join(f"{k} {d[k]['best_us']:.0f} us" for k in keys[:4])
    more = f" (+{len(keys) - 4} more)" if len(keys) > 4 else ""
    bw = f"copy {d['copy_bw_TBps']:.2f} TB/s; " if d.get("copy_bw_TBps") else ""
    return f"launch-config sweep, best per kernel: {bw}{best}{more}"


def _runs(d: Dict[str, Any]) -> str:
    ov = [r["overhead_pct"] for r in d["runs"] if isinstance(r.get("overhead_pct"), (int, float))]
    if not ov:  # all_runs: one list per run
        ov = [x for r in d["runs"] for x in (r.get("overhead_pct") or [])]
    return (f"{len(ov)} layer runs, mHC {', '.join(f'{x:+.1f}' for x in ov[:6])}"
            f"{' ...' if len(ov) > 6 else ''} % (median {statistics.median(ov):+.1f} %)")


def _profile(d: Dict[str, Any]) -> str:
    v = d.get("variants", {})
    parts = []
    for k, x in v.items():
        s = f"{k} wall {x['wall_ms']:.1f} ms, host issue {x['issue_ms']:.1f} ms"
        if "gpu_idle_ms" in x:
            s += f", idle {x['gpu_idle_ms']:.1f} ms"
        parts.append(s)
    return "profiler, one step: " + "; ".join(parts)


def _host(d: Dict[str, Any]) -> str:
    if "compared_with" in d:  # alternating processes of two commits on one machine
        def issue(commit, shape):
            return "/".join(f"{r[f'{shape}_fast_launch']['host_us'] / 1e3:.2f}"
                            for r in d["runs"][commit])
        new, old = d["commit"], d["compared_with"]
        return ("host time A/B, one connection fwd+bwd issue (ms, each run): "
                + "; ".join(f"{shape.replace('_', ', ')} {new} {issue(new, shape)} vs "
                            f"{old} {issue(old, shape)}" for shape in ("T4096_C4096", "T8192_C1024")))
    if "connection" in d:
        c = d["connection"].get("T4096_C4096_fast_launch", {})
        g = d.get("gpt_small_eager", {})
        return (f"host time: one connection fwd+bwd issues in {c.get('host_us', 0) / 1e3:.2f} ms for "
                f"{c.get('gpu_us', 0) / 1e3:.2f} ms GPU (T = C = 4096); eager gpt-small step issue "
                + ", ".join(f"{k} {x['issue_ms']:.1f} ms" for k, x in g.items()))
    s = {k: d[k]["wall_ms"] for k in d if k.startswith("gpt-small")}
    return ("host time: gpt-small step " + ", ".join(f"{k[10:]} {x:.1f} ms" for k, x in s.items())
            + f"; connection issue {d['fast']['connection_host_us'] / 1e3:.2f} ms (T 8192, C 1024)")


def _deepseek(d: Dict[str, Any]) -> str:
    m, s = d["model"], d.get("site", {})
    t = m["transformers"]["median_ms"], m["torch_mhc"]["median_ms"]
    out = f"DeepSeek-V4 4-layer step: transformers {t[0]:.1f} ms, patched {t[1]:.1f} ms"
    if "torch_mhc" in s:
        out += f"; one mHC site {s['torch_mhc']['speedup_vs_transformers']:.1f}x faster"
    return out


def _distributed(d: Dict[str, Any]) -> str:
    eff = {f"{r['preset']} {r['parallel']}": r["scaling_efficiency_per_gpu"]
           for r in d["runs"] if r["gpus"] > 1}
    return "torchrun 2 GPUs, per-GPU tokens/s over one GPU: " + ", ".join(
        f"{k} {v:.0%}" for k, v in eff.items())


def summarise(path: Path, fields: Dict[str, str]) -> str:
    """One line on what the result shows, from its contents."""
    suite = fields["suite"]
    if path.is_dir():
        what = {"study": "training logs, configs and summaries of the LM and 100-layer depth "
                         "studies (docs/results.md)",
                "distributed": "every run's summary.json of the distributed JSON beside it"}
        return what.get(suite, "folder of run logs")
    if path.suffix == ".txt":
        if suite == "ncu":
            return f"Nsight Compute report of the {fields['variant']} kernel, one launch at the layer shape"
        if suite == "compiled-host":
            return "issue time and cProfile of compiled mHC connections (`profile_compiled_host.py`)"
        return "printed summary of a `gpu_check.py` run" if suite == "summary" else "text"
    d = json.loads(path.read_text())
    if suite == "tuning":
        return "launch configurations chosen by the sweep: " + ", ".join(d)
    if suite == "sweep":
        return _sweep(d)
    if suite == "kernels":
        return _kernels(d)
    if suite in ("layer", "gpt-small"):
        return (_runs(d) if "runs" in d else f"{suite} step: " + _step(d))
    if suite.startswith("profile"):
        return _profile(d)
    if suite == "host-overhead":
        return _host(d)
    if suite == "deepseek-v4":
        return _deepseek(d)
    if suite == "distributed":
        return _distributed(d)
    return str(d.get("what", d.get("note", ""))).split(".")[0]


def variant_note(suite: str, variant: Optional[str]) -> str:
    """What the variant tag means: every known tag it contains, less those inside a longer one."""
    if not variant or suite in ("ncu", "post-res-proj"):
        return ""
    hits = [k for k in VARIANT_NOTES if k in variant]
    hits = [k for k in hits if not any(k != h and k in h for h in hits)]
    return "; ".join(VARIANT_NOTES[k] for k in sorted(hits, key=variant.index))


def entries() -> Tuple[List[Tuple[Path, Dict[str, str]]], List[str]]:
    """``(path, fields)`` of every result, and the names that do not follow the scheme."""
    good, bad = [], []
    for p in sorted(RESULTS.iterdir()):
        if p.name == INDEX.name:
            continue
        f = parse(p.name)
        (good.append((p, f)) if f else bad.append(p.name))
    good.sort(key=lambda e: (e[1]["suite"], e[0].name))
    good.sort(key=lambda e: e[1]["date"], reverse=True)  # stable: newest day first
    return good, bad


def render() -> Tuple[str, List[str]]:
    """INDEX.md's text and the names that do not follow the scheme."""
    good, bad = entries()
    lines = [
        "# Benchmark results",
        "",
        "Generated by `python benchmarks/index_results.py`; do not edit by hand. Names are",
        "`<suite>_<gpu>_<date>_<commit>[_<variant>]`: the date the result was recorded, the commit",
        "the file names as measured (or, where it names none, the commit that recorded it).",
        "Newest first. How the numbers evolved: [docs/perf-history.md](../../docs/perf-history.md);",
        "what each experiment tried: [NOTES.md](../NOTES.md).",
        "",
        "| file | suite | GPU | date | commit | what it shows |",
        "|---|---|---|---|---|---|",
    ]
    for p, f in good:
        what = summarise(p, f)
        note = variant_note(f["suite"], f["variant"])
        if note:
            what = f"{what}. {note[0].upper()}{note[1:]}" if what else note
        name = p.name + ("/" if p.is_dir() else "")
        lines.append(f"| `{name}` | {f['suite']} | {GPUS[f['gpu']]} | {f['date']} | {f['commit']} "
                     f"| {what.replace('|', '/')} |")
    return "\n".join(lines) + "\n", bad


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if INDEX.md is stale or a name is off")
    args = ap.parse_args(argv)
    text, bad = render()
    for name in bad:
        print(f"not named <suite>_<gpu>_<date>_<commit>[_<variant>]: {name}", file=sys.stderr)
    if args.check:
        stale = not INDEX.is_file() or INDEX.read_text() != text
        if stale:
            print(f"{INDEX} is stale: run python benchmarks/index_results.py", file=sys.stderr)
        return 1 if stale or bad else 0
    INDEX.write_text(text)
    print(f"wrote {INDEX} ({text.count(chr(10)) - 10} results)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
