"""PNG plots of one or more runs, from their log records (matplotlib, Agg backend).

Each function takes ``runs`` (mode -> list of log records) and a path, draws one figure and
returns the path, or None when the logs hold nothing to draw (e.g. diagnostics were off).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..diagnostics import find_spikes  # noqa: E402

__all__ = ["PLOTS", "COLORS", "color", "plot_loss", "plot_grad_norm_steps", "plot_gain_vs_layer",
           "plot_gain_steps", "plot_grad_vs_layer", "plot_hres_heatmaps", "plot_step_stats",
           "make_plots", "plot_seeds"]

Runs = Dict[str, List[dict]]
COLORS = {"residual": "#4d4d4d", "hc": "#d62728", "mhc": "#1f77b4"}
_STYLES = {"residual": dict(ls="-", marker="s"), "hc": dict(ls="-", marker="^"),
           "mhc": dict(ls="-", marker="o")}


def color(mode: str, i: int = 0) -> str:
    """The fixed colour of a mode (other labels take matplotlib's cycle)."""
    return COLORS.get(mode, f"C{(i + 3) % 10}")


def _of(records, kind):
    return [r for r in records if r.get("type") == kind]


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _ema(values, alpha=0.1):
    out, m = [], None
    for v in values:
        m = v if m is None else (1 - alpha) * m + alpha * v
        out.append(m)
    return out


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _gain_ylim(ax, values):
    vals = [v for v in values if _finite(v) and v > 0]
    lo = min([0.5] + vals)
    hi = max([2.0] + vals)
    ax.set_ylim(lo / 1.2, hi * 1.5)


def plot_loss(runs: Runs, path: Path) -> Optional[Path]:
    """Training loss (smoothed, raw faint) and validation loss against the step."""
    if not any(_of(r, "train") for r in runs.values()):
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (mode, recs) in enumerate(runs.items()):
        tr = [r for r in _of(recs, "train") if _finite(r.get("loss"))]
        if tr:
            steps, loss = [r["step"] for r in tr], [r["loss"] for r in tr]
            a1.plot(steps, loss, color=color(mode, i), alpha=0.2, lw=0.8)
            a1.plot(steps, _ema(loss), color=color(mode, i), lw=1.8, label=mode)
        ev = [r for r in _of(recs, "eval") if _finite(r.get("val_loss"))]
        if ev:
            a2.plot([r["step"] for r in ev], [r["val_loss"] for r in ev], color=color(mode, i),
                    marker=_STYLES.get(mode, {}).get("marker", "o"), ms=4, label=mode)
        for e in _of(recs, "event"):
            if e.get("event") == "stop":
                a1.axvline(e["step"], color=color(mode, i), ls=":", lw=1)
    a1.set(title="training loss (EMA 0.1; raw faint)", xlabel="step", ylabel="loss (nats/token)")
    a2.set(title="validation loss", xlabel="step", ylabel="loss (nats/token)")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend()
    _zoom(a1, [r["loss"] for recs in runs.values() for r in _of(recs, "train")
               if _finite(r.get("loss"))])
    return _save(fig, path)


def _zoom(ax, values):
    """Keep the first steps' high loss from flattening the interesting part."""
    if len(values) > 20:
        tail = sorted(values)[: max(1, int(0.9 * len(values)))]
        lo, hi = min(values), tail[-1]
        ax.set_ylim(lo - 0.05 * (hi - lo + 1e-9), hi + 0.3 * (hi - lo + 1e-9))


def plot_grad_norm_steps(runs: Runs, path: Path) -> Optional[Path]:
    """Global gradient norm (before clipping) per step, log scale; spikes marked."""
    if not any(_of(r, "train") for r in runs.values()):
        return None
    fig, ax = plt.subplots(figsize=(11, 3.6))
    clip = None
    for i, (mode, recs) in enumerate(runs.items()):
        tr = _of(recs, "train")
        steps, g = [r["step"] for r in tr], [r.get("grad_norm") for r in tr]
        ax.plot([s for s, v in zip(steps, g) if _finite(v)], [v for v in g if _finite(v)],
                color=color(mode, i), lw=1, label=mode)
        sp = [j for j in find_spikes(g) if _finite(g[j])]
        if sp:
            ax.scatter([steps[j] for j in sp], [g[j] for j in sp], color=color(mode, i),
                       marker="x", s=40, zorder=3)
        header = next((r for r in recs if r.get("type") == "config"), {})
        clip = header.get("config", {}).get("grad_clip") or clip
    if clip:
        ax.axhline(clip, color="k", ls="--", lw=0.8, label=f"clip at {clip:g}")
    ax.set_yscale("log")
    ax.set(title="gradient norm before clipping (x: spikes, > 4x the running median)",
           xlabel="step", ylabel="||g||")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return _save(fig, path)


def _final_diag(recs) -> Optional[dict]:
    d = _of(recs, "diag")
    return d[-1] if d else None


def plot_gain_vs_layer(runs: Runs, path: Path) -> Optional[Path]:
    """Composite Amax gain of ``H_res^(l) ... H_res^(1)`` against ``l`` (final diagnostics)."""
    diags = {m: _final_diag(r) for m, r in runs.items()}
    if not any(diags.values()):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    allv = []
    for i, (mode, d) in enumerate(diags.items()):
        if not d:
            continue
        g = d["gain"]
        layers = list(range(1, len(g["comp_fwd_max"]) + 1))
        for ax, key in zip(axes, ("fwd", "bwd")):
            st = _STYLES.get(mode, {})
            ax.plot(layers, g[f"comp_{key}_max"], color=color(mode, i), ms=4,
                    label=f"{mode} (max over tokens)", **st)
            ax.plot(layers, g[f"comp_{key}_mean"], color=color(mode, i), ls="--", lw=1,
                    label=f"{mode} (token mean)")
            allv += g[f"comp_{key}_max"]
    step = next(d["step"] for d in diags.values() if d)
    for ax, name in zip(axes, ("forward gain (max |row sum|)", "backward gain (max |col sum|)")):
        ax.set_yscale("log")
        _gain_ylim(ax, allv)
        ax.axhline(1.0, color="k", lw=0.6)
        ax.set(title=f"composite {name}, step {step}", xlabel="layer l (product of layers 1..l)",
               ylabel="Amax gain")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    return _save(fig, path)


def plot_gain_steps(runs: Runs, path: Path) -> Optional[Path]:
    """Largest composite gain over layers against the training step."""
    if not any(_of(r, "diag") for r in runs.values()):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    allv = []
    for i, (mode, recs) in enumerate(runs.items()):
        ds = _of(recs, "diag")
        if not ds:
            continue
        steps = [d["step"] for d in ds]
        for ax, key in zip(axes, ("fwd", "bwd")):
            comp = [max(d["gain"][f"comp_{key}_max"]) for d in ds]
            single = [max(d["gain"][f"{key}_max"]) for d in ds]
            ax.plot(steps, comp, color=color(mode, i), label=f"{mode} composite",
                    **_STYLES.get(mode, {}), ms=3)
            ax.plot(steps, single, color=color(mode, i), ls=":", lw=1,
                    label=f"{mode} single layer")
            allv += comp + single
            paper = [d["paper_gain"][f"comp_{key}_peak"] for d in ds if d.get("paper_gain")]
            if len(paper) == len(steps):  # absent in logs of older versions
                ax.plot(steps, paper, color=color(mode, i), ls="--", lw=1,
                        label=f"{mode} paper (l..L, token mean)")
                allv += paper
    for ax, name in zip(axes, ("forward", "backward")):
        ax.set_yscale("log")
        _gain_ylim(ax, allv)
        ax.axhline(1.0, color="k", lw=0.6)
        ax.set(title=f"max {name} gain over layers", xlabel="step", ylabel="Amax gain")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    return _save(fig, path)


def plot_grad_vs_layer(runs: Runs, path: Path) -> Optional[Path]:
    """Per-layer gradient norm of the parameters and of the residual stream (final probe)."""
    diags = {m: _final_diag(r) for m, r in runs.items()}
    if not any(diags.values()):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, (mode, d) in enumerate(diags.items()):
        if not d:
            continue
        for ax, key, ratio in zip(axes, ("grad_param", "grad_stream"),
                                  ("grad_param_ratio", "grad_stream_ratio")):
            vals = [v if _finite(v) else float("nan") for v in d[key]]
            r = d.get(ratio)
            lab = f"{mode} (deepest/shallowest {r:.3g})" if _finite(r) else mode
            ax.plot(range(1, len(vals) + 1), vals, color=color(mode, i), label=lab,
                    **_STYLES.get(mode, {}), ms=4)
    step = next(d["step"] for d in diags.values() if d)
    for ax, name in zip(axes, ("parameters of each layer", "residual stream entering layer l")):
        ax.set_yscale("log")
        ax.set(title=f"gradient norm: {name}, step {step}", xlabel="layer l", ylabel="||g||")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_hres_heatmaps(runs: Runs, path: Path, max_layers: int = 4) -> Optional[Path]:
    """Token-averaged ``H_res`` of a few layers (first to last) per mode that has one."""
    diags = {m: _final_diag(r) for m, r in runs.items()}
    diags = {m: d for m, d in diags.items() if d and d.get("hres_mean")}
    if not diags:
        return None
    L = max(len(d["hres_mean"]) for d in diags.values())
    picks = sorted({round(j * (L - 1) / max(1, max_layers - 1)) for j in range(max_layers)})
    vmax = max(1.0, max(abs(v) for d in diags.values() for m in d["hres_mean"]
                        for row in m for v in row))
    fig, axes = plt.subplots(len(diags), len(picks), squeeze=False,
                             figsize=(2.6 * len(picks) + 1, 2.6 * len(diags) + 0.4))
    names = {}
    for recs in runs.values():
        header = next((r for r in recs if r.get("type") == "config"), {})
        names = header.get("layer_names") or names
    im = None
    for row, (mode, d) in enumerate(diags.items()):
        for col, li in enumerate(picks):
            ax = axes[row][col]
            if li >= len(d["hres_mean"]):
                ax.axis("off")
                continue
            m = d["hres_mean"][li]
            im = ax.imshow(m, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
            n = len(m)
            if n <= 6:
                for a in range(n):
                    for b in range(n):
                        ax.text(b, a, f"{m[a][b]:.2f}", ha="center", va="center", fontsize=7,
                                color="white" if abs(m[a][b]) > 0.6 * vmax else "black")
            label = names[li] if li < len(names) else str(li)
            ax.set_title(f"{mode}: layer {li + 1} ({label})", fontsize=8)
            ax.set_xticks(range(n))
            ax.set_yticks(range(n))
            ax.tick_params(labelsize=6)
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.8, label="H_res[i, j] (token mean)")
    step = next(iter(diags.values()))["step"]
    fig.suptitle(f"H_res averaged over the probe tokens, step {step} "
                 f"(row i = output stream, column j = input stream)", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_step_stats(runs: Runs, path: Path) -> Optional[Path]:
    """Per training step: last/first layer gradient-norm ratio and mean ``||H_res||_F``."""
    keys = ("grad_ratio_last_first", "hres_fro_mean")
    if not any(r.get(k) is not None for recs in runs.values() for r in _of(recs, "train")
               for k in keys):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, (mode, recs) in enumerate(runs.items()):
        for ax, key in zip(axes, keys):
            pts = [(r["step"], r[key]) for r in _of(recs, "train") if _finite(r.get(key))]
            if pts:
                ax.plot(*zip(*pts), color=color(mode, i), label=mode, lw=1)
    axes[0].set_yscale("log")
    axes[0].set(title="gradient norm, last / first layer", xlabel="step", ylabel="ratio")
    axes[1].set(title="mean ||H_res||_F over layers and tokens", xlabel="step",
                ylabel="Frobenius norm")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return _save(fig, path)


PLOTS = (("loss", plot_loss), ("gain_vs_layer", plot_gain_vs_layer),
         ("gain_over_steps", plot_gain_steps), ("grad_norm_vs_layer", plot_grad_vs_layer),
         ("grad_norm_over_steps", plot_grad_norm_steps), ("hres_heatmaps", plot_hres_heatmaps),
         ("step_stats", plot_step_stats))


def make_plots(runs: Runs, folder: Path) -> Dict[str, Path]:
    """All plots into ``folder``; returns name -> path for those that had data."""
    out = {}
    for name, fn in PLOTS:
        p = fn(runs, Path(folder) / f"{name}.png")
        if p is not None:
            out[name] = p
    return out


def plot_seeds(per_seed: Dict[str, Runs], path: Path) -> Optional[Path]:
    """Several seeds of a comparison on one figure (one colour per mode, one line per seed):
    training loss (EMA 0.1), validation loss, the paper-convention composite forward gain
    (layers l..L, token mean) at each diagnostics probe, and the per-step last / first layer
    gradient-norm ratio."""
    if not any(_of(recs, "train") for runs in per_seed.values() for recs in runs.values()):
        return None
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    (a_tr, a_val), (a_gain, a_ratio) = axes
    modes = list(dict.fromkeys(m for runs in per_seed.values() for m in runs))
    losses, gains, late_val = [], [], []
    for seed, runs in per_seed.items():
        for mode, recs in runs.items():
            c = color(mode, modes.index(mode))
            tr = [r for r in _of(recs, "train") if _finite(r.get("loss"))]
            if tr:
                loss = [r["loss"] for r in tr]
                a_tr.plot([r["step"] for r in tr], _ema(loss), color=c, lw=1, alpha=0.8)
                losses += loss
            ev = [r for r in _of(recs, "eval") if _finite(r.get("val_loss"))]
            if ev:
                late_val += [r["val_loss"] for r in ev[1:]]
                a_val.plot([r["step"] for r in ev], [r["val_loss"] for r in ev], color=c,
                           marker=_STYLES.get(mode, {}).get("marker", "o"), ms=3, lw=1,
                           alpha=0.8)
            pg = [(d["step"], d["paper_gain"]["comp_fwd_peak"]) for d in _of(recs, "diag")
                  if d.get("paper_gain")]
            if pg:
                a_gain.plot(*zip(*pg), color=c, lw=1, alpha=0.8,
                            marker=_STYLES.get(mode, {}).get("marker", "o"), ms=3)
                gains += [g for _, g in pg]
            rt = [(r["step"], r["grad_ratio_last_first"]) for r in _of(recs, "train")
                  if _finite(r.get("grad_ratio_last_first"))]
            if rt:
                a_ratio.plot(*zip(*rt), color=c, lw=0.6, alpha=0.6)
    for mode in modes:  # one legend entry per mode
        a_tr.plot([], [], color=color(mode, modes.index(mode)), label=mode)
    a_tr.set(title=f"training loss (EMA 0.1), {len(per_seed)} seeds", xlabel="step",
             ylabel="loss (nats/token)")
    _zoom(a_tr, losses)
    a_val.set(title="validation loss", xlabel="step", ylabel="loss (nats/token)")
    if late_val:  # the first evaluation (often the untrained model) off the top
        lo, hi = min(late_val), max(late_val)
        pad = 0.1 * (hi - lo) + 0.005
        a_val.set_ylim(lo - pad, hi + 3 * pad)
    a_gain.set(title="composite forward gain, paper convention (l..L, token mean)",
               xlabel="step", ylabel="max over layers")
    a_gain.set_yscale("log")
    _gain_ylim(a_gain, gains)
    a_ratio.set(title="gradient norm, last / first layer, per step", xlabel="step",
                ylabel="ratio")
    a_ratio.set_yscale("log")
    for ax in axes.flat:
        ax.grid(alpha=0.3, which="both")
    a_tr.legend()
    return _save(fig, path)
