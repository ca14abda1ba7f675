"""``mhc report DIR``: plots and one self-contained ``report.html`` from run logs.

``DIR`` is either a comparison (``DIR/<mode>/log.jsonl`` for each mode, as ``mhc compare``
writes it) or a single run (``DIR/log.jsonl``, as ``mhc train`` writes it). Everything is
rebuilt from the logs, so a run done elsewhere (a GPU box) can be reported here. The HTML
embeds the PNGs, so the one file can be mailed or opened anywhere.

A damaged log (a line cut short or garbled) is read without its unreadable lines, which
are reported; ``summary.json`` is then left as the run wrote it and the report's summary
table takes that run's numbers from it, so a damaged log never overwrites good numbers.
"""
from __future__ import annotations

import base64
import html
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .. import __version__
from .logs import read_log, summarize
from .plots import color, make_plots

__all__ = ["ReportError", "load_runs", "write_report"]


class ReportError(ValueError):
    """The folder holds no readable run logs."""


def load_runs(folder, skipped: Optional[Dict[str, List[int]]] = None
              ) -> Tuple[Dict[str, List[dict]], bool]:
    """``(mode -> records, is_comparison)`` from a comparison or single-run folder.

    Unreadable log lines are left out; with ``skipped`` (a dict) their line numbers are
    recorded per mode (modes whose logs are intact do not appear)."""
    root = Path(folder)
    if not root.exists():
        raise ReportError(f"{folder} does not exist")
    if not root.is_dir():
        raise ReportError(f"{folder} is a file; give the folder of a run or comparison")
    skipped = {} if skipped is None else skipped

    def read(mode: str, path: Path) -> Tuple[str, List[dict]]:
        bad: List[int] = []
        recs = read_log(path, skipped=bad)
        if not recs:
            raise ReportError(f"{path} holds no readable record"
                              + (f" (line(s) {', '.join(map(str, bad))} are not valid JSON)"
                                 if bad else ""))
        if path.parent == root:  # a single run: named by its connection
            header = next((r for r in recs if r.get("type") == "config"), {})
            mode = header.get("config", {}).get("connection", mode)
        if bad:
            skipped[mode] = bad
        return mode, recs

    try:
        if (root / "log.jsonl").is_file():
            return dict([read(root.name, root / "log.jsonl")]), False
        order = []
        if (root / "config.json").is_file():
            try:
                order = json.loads((root / "config.json").read_text()).get("modes", [])
            except (ValueError, AttributeError):
                order = []  # a damaged config.json: the modes in folder order
        found = sorted(p.parent.name for p in root.glob("*/log.jsonl"))
        modes = [m for m in order if m in found] + [m for m in found if m not in order]
        runs = dict(read(m, root / m / "log.jsonl") for m in modes)
    except OSError as e:
        raise ReportError(f"cannot read the logs in {folder}: {e}") from None
    if not runs:
        raise ReportError(f"no run logs in {folder}: expected {folder}/log.jsonl (mhc train) "
                          f"or {folder}/<mode>/log.jsonl (mhc compare)")
    return runs, True


def _saved_summary(root: Path, mode: str, is_cmp: bool) -> Optional[dict]:
    """The summary a run wrote itself (``<mode>/summary.json``, else the comparison's
    entry; ``summary.json`` of a single run), or None."""
    paths = [(root / mode / "summary.json", None), (root / "summary.json", mode)] if is_cmp \
        else [(root / "summary.json", None)]
    for path, key in paths:
        try:
            d = json.loads(path.read_text())
            d = d.get(key) if key else d
            if isinstance(d, dict) and d:
                return d
        except (OSError, ValueError, AttributeError):
            continue
    return None


def _num(v, spec=".4g") -> str:
    if v is None:
        return "&ndash;"
    if isinstance(v, bool):
        return "<b style='color:#c00'>yes</b>" if v else "no"
    if isinstance(v, (int, float)):
        if isinstance(v, float) and not math.isfinite(v):
            return "&ndash;"
        return format(v, spec)
    return html.escape(str(v))


SUMMARY_ROWS = [
    ("final training loss (mean of last 10 steps)", "final_train_loss", ".4f"),
    ("final validation loss", "final_val_loss", ".4f"),
    ("best validation loss", "best_val_loss", ".4f"),
    ("max composite forward gain (all layers, all probes)", "max_composite_forward_gain",
     ".6g"),
    ("max composite backward gain", "max_composite_backward_gain", ".6g"),
    ("final composite forward gain", "final_composite_forward_gain", ".6g"),
    ("final composite backward gain", "final_composite_backward_gain", ".6g"),
    ("max single-layer forward gain", "max_single_layer_forward_gain", ".6g"),
    ("max single-layer backward gain", "max_single_layer_backward_gain", ".6g"),
    ("paper convention: max composite forward gain (layers l..L, token mean per sequence)",
     "paper_composite_forward_gain_max", ".6g"),
    ("paper convention: max composite backward gain", "paper_composite_backward_gain_max",
     ".6g"),
    ("per step: last / first layer gradient norm (mean of last 10 steps)",
     "step_grad_ratio_last_first_final", ".4g"),
    ("per step: last / first layer gradient norm, smallest", "step_grad_ratio_last_first_min",
     ".4g"),
    ("per step: last / first layer gradient norm, largest", "step_grad_ratio_last_first_max",
     ".4g"),
    ("per step: mean ||H_res||_F (mean of last 10 steps)", "step_hres_fro_mean_final", ".4g"),
    ("per step: mean ||H_res||_F, smallest", "step_hres_fro_mean_min", ".4g"),
    ("parameter gradient, deepest / shallowest layer", "grad_ratio_deepest_to_shallowest",
     ".4g"),
    ("stream gradient, deepest / shallowest layer", "stream_grad_ratio_deepest_to_shallowest",
     ".4g"),
    ("H_res max |row sum - 1|", "hres_row_err_max", ".2e"),
    ("H_res max |column sum - 1|", "hres_col_err_max", ".2e"),
    ("H_res mean ||H - I||_F", "hres_dist_identity_mean", ".4g"),
    ("diverged", "diverged", ""), ("diverged at step", "diverged_at_step", "d"),
    ("skipped steps", "skipped_steps", "d"), ("max gradient norm", "grad_norm_max", ".4g"),
    ("gradient-norm spikes", "grad_norm_spikes", "d"),
    ("steps clipped", "clipped_fraction", ".1%"),
    ("tokens / s", "tokens_per_s", ",.0f"), ("peak memory (MiB)", "peak_memory_mb", ",.0f"),
    ("memory measured as", "memory_kind", ""), ("training time (s)", "wall_time_s", ",.1f"),
    ("steps", "steps", "d"), ("tokens", "tokens", ",d"), ("parameters", "params", ",d"),
    ("streams", "streams", "d"),
]

CAPTIONS = {
    "loss": "Training loss (smoothed) and validation loss. Same data, same order, same "
            "initialisation of every shared weight: only the connection differs.",
    "gain_vs_layer": "Amax gain magnitude (mHC paper, Sec. 3.1) of the composite mapping "
                     "H_res<sup>(l)</sup>&middot;&middot;&middot;H_res<sup>(1)</sup> per token, "
                     "forward = max absolute row sum, backward = max absolute column sum, "
                     "maximised (solid) and averaged (dashed) over the probe tokens, log "
                     "scale. The plain residual is exactly 1; a doubly stochastic H_res "
                     "(mHC) keeps every product at 1; unconstrained HC can drift (the paper "
                     "measures peaks near 3000 at 27B, mHC about 1.6).",
    "gain_over_steps": "Largest gain over layers at each diagnostics step: composite "
                       "(solid) and single layer (dotted).",
    "grad_norm_vs_layer": "Gradient norm per layer on the probe batch: of each connection's "
                          "parameters (branch included) and of the residual stream entering "
                          "the layer. Flat is healthy; a steep slope means vanishing or "
                          "exploding gradients through depth.",
    "grad_norm_over_steps": "Global gradient norm per step before clipping; crosses mark "
                            "spikes (the paper's HC loss surge at 27B comes with one).",
    "step_stats": "Per training step: gradient norm of the last connection's parameters over "
                  "the first's (log scale), and the Frobenius norm of H_res averaged over "
                  "layers and tokens of the training batch (2 = identity at n = 4, 1 = "
                  "uniform mixing). A collapse of the norm or a jump of the ratio marks the "
                  "mixing drifting off.",
    "hres_heatmaps": "H_res averaged over the probe tokens for a few layers (first to "
                     "last). mHC: non-negative, rows and columns summing to 1. HC: "
                     "unconstrained, can be negative or grow.",
}


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<img src='data:image/png;base64,{data}' alt='{html.escape(path.stem)}'>"


def _layer_table(mode: str, recs: List[dict]) -> str:
    d = next((r for r in reversed(recs) if r.get("type") == "diag"), None)
    if not d:
        return ""
    header = next((r for r in recs if r.get("type") == "config"), {})
    names = header.get("layer_names", [])
    g, h, pre, post = d["gain"], d.get("hres"), d.get("pre"), d.get("post")
    cols = ["layer", "gain fwd", "gain bwd", "composite fwd (max / mean)",
            "composite bwd (max / mean)"]
    if h:
        cols += ["|row sum-1|", "|col sum-1|", "||H-I||", "entropy", "min entry",
                 "H_pre range", "H_post range"]
    cols += ["grad params", "grad stream"]
    rows = []
    for i in range(len(g["fwd_max"])):
        cells = [html.escape(names[i] if i < len(names) else str(i)),
                 _num(g["fwd_max"][i]), _num(g["bwd_max"][i]),
                 f"{_num(g['comp_fwd_max'][i])} / {_num(g['comp_fwd_mean'][i])}",
                 f"{_num(g['comp_bwd_max'][i])} / {_num(g['comp_bwd_mean'][i])}"]
        if h:
            cells += [_num(h["row_err_max"][i], ".1e"), _num(h["col_err_max"][i], ".1e"),
                      _num(h["dist_identity"][i], ".3f"), _num(h["entropy"][i], ".3f"),
                      _num(h["min_entry"][i], ".3f"),
                      f"{_num(pre['min'][i], '.3f')} &ndash; {_num(pre['max'][i], '.3f')}",
                      f"{_num(post['min'][i], '.3f')} &ndash; {_num(post['max'][i], '.3f')}"]
        cells += [_num(d["grad_param"][i], ".3g"), _num(d["grad_stream"][i], ".3g")]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return (f"<h3 style='color:{color(mode)}'>{html.escape(mode)} &mdash; step {d['step']}, "
            f"probe loss {_num(d.get('loss'), '.4f')}</h3><table class='grid'><tr>"
            + "".join(f"<th>{c}</th>" for c in cols) + "</tr>" + "".join(rows) + "</table>")


def _config_table(runs: Dict[str, List[dict]]) -> str:
    headers = {m: next((r for r in reversed(recs) if r.get("type") == "config"), {})
               for m, recs in runs.items()}
    first = next(iter(headers.values()))
    cfg = dict(first.get("config", {}))
    per_mode = {k for h in headers.values() for k, v in h.get("config", {}).items()
                if v != cfg.get(k)}
    rows = []
    for k, v in cfg.items():
        if k in per_mode:
            v = "; ".join(f"{m}: {h.get('config', {}).get(k)}" for m, h in headers.items())
        rows.append(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>")
    meta = [("data", first.get("data")), ("vocabulary", first.get("vocab_size")),
            ("tokens per step", first.get("tokens_per_step")), ("device", first.get("device")),
            ("precision", first.get("dtype")), ("torch", first.get("torch_version")),
            ("torch-mhc", first.get("torch_mhc_version")), ("started", first.get("time"))]
    rows += [f"<tr><td><i>{k}</i></td><td>{html.escape(str(v))}</td></tr>" for k, v in meta]
    return "<table class='grid'>" + "".join(rows) + "</table>"


def _param_match(root: Path) -> str:
    """The parameter-matching statement of ``mhc compare --match-params`` (if any)."""
    try:
        text = json.loads((root / "param_match.json").read_text())["text"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return f"<p><b>Parameter matching:</b> {html.escape(text)}.</p>"


def _events(runs) -> str:
    items = [f"<li><b>{html.escape(m)}</b>, step {e.get('step')}: {html.escape(e['event'])}"
             f"{' &mdash; ' + html.escape(str(e.get('reason') or e.get('detail') or '')) if e.get('reason') or e.get('detail') else ''}</li>"
             for m, recs in runs.items() for r in recs if r.get("type") == "event"
             for e in [r]]
    return "<ul>" + "".join(items) + "</ul>" if items else "<p>none</p>"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1180px;
margin:24px auto;padding:0 16px;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:0} h2{margin-top:1.8em;border-bottom:1px solid #ddd}
table.grid{border-collapse:collapse;font-size:0.86em;margin:8px 0}
table.grid td,table.grid th{border:1px solid #ddd;padding:3px 8px;text-align:right}
table.grid td:first-child,table.grid th:first-child{text-align:left}
table.grid th{background:#f4f4f4} img{max-width:100%;border:1px solid #eee}
.cap{color:#555;font-size:0.9em;margin:2px 0 18px} .muted{color:#777;font-size:0.9em}
.warn{background:#fff4e5;border-left:4px solid #e69500;padding:6px 10px}
"""


def write_report(folder, skipped: Optional[Dict[str, List[int]]] = None) -> Path:
    """Rebuild ``summary.json``, ``plots/*.png`` and ``report.html`` in ``folder``.

    When a log has unreadable lines (recorded in ``skipped``, a dict, per mode),
    ``summary.json`` is not rewritten and the damaged runs' own summaries are shown."""
    root = Path(folder)
    from .seeds import is_seed_study, write_seed_report
    if is_seed_study(root):  # each seed folder is a comparison with its own report
        return write_seed_report(root)
    skipped = {} if skipped is None else skipped
    runs, is_cmp = load_runs(root, skipped)
    summaries = {m: summarize(recs) for m, recs in runs.items()}
    kept = {}
    for m in skipped:
        saved = _saved_summary(root, m, is_cmp)
        if saved is not None:
            summaries[m] = kept[m] = saved
    summary_out = summaries if is_cmp else next(iter(summaries.values()))
    if not skipped or not (root / "summary.json").exists():
        (root / "summary.json").write_text(json.dumps(summary_out, indent=2) + "\n")
    damage = "".join(
        f"<p class='warn'>The log of <b>{html.escape(m)}</b> has unreadable line(s) "
        f"{html.escape(', '.join(map(str, lines)))}, skipped in the plots; "
        + ("its summary is the one the run wrote (summary.json left as it was)."
           if m in kept else "its summary is from the readable lines.") + "</p>"
        for m, lines in skipped.items())
    plots = make_plots(runs, root / "plots")
    modes = list(runs)
    head = "".join(f"<th style='color:{color(m, i)}'>{html.escape(m)}</th>"
                   for i, m in enumerate(modes))
    body = "".join(
        f"<tr><td>{label}</td>" + "".join(f"<td>{_num(summaries[m].get(k), spec)}</td>"
                                          for m in modes) + "</tr>"
        for label, k, spec in SUMMARY_ROWS)
    figs = "".join(f"<h3>{name.replace('_', ' ')}</h3>{_img(p)}"
                   f"<p class='cap'>{CAPTIONS.get(name, '')}</p>" for name, p in plots.items())
    layers = "".join(_layer_table(m, recs) for m, recs in runs.items()) or \
        "<p>no diagnostics were recorded (--diag-interval 0)</p>"
    files = "".join(f"<li><a href='{html.escape(m + '/log.jsonl' if is_cmp else 'log.jsonl')}'>"
                    f"{html.escape(m)} log</a></li>" for m in modes)
    first = next((r for r in runs[modes[0]] if r.get("type") == "config"), {})
    cfg = first.get("config", {})
    title = ("torch-mhc: " + " vs ".join(modes)) if is_cmp else f"torch-mhc run: {modes[0]}"
    page = f"""<!doctype html><html><head><meta charset='utf-8'>
<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>
<h1>{html.escape(title)}</h1>
<p class='muted'>{html.escape(str(cfg.get('model')))} preset <b>{html.escape(str(cfg.get('preset')))}</b>,
data {html.escape(str(first.get('data')))}, {html.escape(str(cfg.get('max_steps')))} steps of
{html.escape(str(first.get('tokens_per_step')))} tokens on {html.escape(str(first.get('device')))}.
Report generated {datetime.now(timezone.utc).isoformat(timespec='seconds')} by torch-mhc {__version__}
from <code>{html.escape(str(root))}</code>.</p>
{damage}<p>Manifold-Constrained Hyper-Connections (mHC, DeepSeek, arXiv 2512.24880) widen the
residual stream into n streams mixed by a matrix H_res at every layer, and constrain
H_res to be doubly stochastic so that the composite mapping through depth can neither
amplify nor kill the signal. This report trains the same model with each connection and
shows what the constraint buys: the loss, the gain of the composite mapping through depth,
and how gradients reach the first layers.</p>
{_param_match(root)}
<h2>Summary</h2><table class='grid'><tr><th>metric</th>{head}</tr>{body}</table>
<h2>Plots</h2>{figs}
<h2>Per layer, last diagnostics step</h2>{layers}
<h2>Events</h2>{_events(runs)}
<h2>Configuration</h2>{_config_table(runs)}
<h2>Files</h2><ul>{files}<li><a href='summary.json'>summary.json</a></li></ul>
</body></html>
"""
    out = root / "report.html"
    out.write_text(page, encoding="utf-8")
    return out
