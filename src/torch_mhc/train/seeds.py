"""``mhc compare --seeds K`` and ``--match-params``: several seeds, mean and spread, and a
parameter-matched residual baseline.

Seeds: the comparison is run once per seed ``seed, seed + 1, ..., seed + K - 1`` (each seed
changes the initialisation and the data order alike for every mode) into ``DIR/seed-<s>/``,
each a complete comparison folder with its own report. ``DIR/summary.json`` then holds, per
mode and per number of the per-run summaries, the mean, the sample standard deviation
(``n - 1``; 0 for one seed), the minimum, the maximum and the number of seeds that had it;
``diverged`` is counted. ``DIR/report.html`` shows them as ``mean +/- std (min - max)`` and
links the per-seed reports.

Parameter matching: mHC and HC add parameters to a model (the mappings' projections and
biases), so a plain residual model of the same shape is smaller. ``--match-params width``
widens the residual model's ``d_model`` (for the GPT, in steps of ``2 * n_head`` so that the
head dimension stays even; for the deep stack, in steps of 1), ``--match-params depth``
deepens it (``n_layer``), to the value whose parameter count is closest to the mHC model's
(the first non-residual mode when mHC is not compared). What was changed and the resulting
counts are written to ``DIR/param_match.json`` and stated in the report.
"""
from __future__ import annotations

import dataclasses
import html
import json
import math
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .config import ConfigError, TrainConfig, config_to_dict

__all__ = ["MATCH_CHOICES", "count_params", "match_params", "compare_seeds", "aggregate",
           "is_seed_study", "write_seed_report", "write_study_config"]

MATCH_CHOICES = ("none", "width", "depth")
_MAX_SCAN = 4096  # candidate widths/depths tried at most


def count_params(cfg: TrainConfig, vocab_size: int) -> int:
    """Trainable parameters of the model ``cfg`` describes (built on the meta device)."""
    from .trainer import build_model
    with torch.device("meta"):
        model = build_model(cfg, vocab_size)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _vocab(cfg: TrainConfig) -> int:
    if cfg.vocab_size:
        return cfg.vocab_size
    from ..data import load_corpus
    from .trainer import _raw_vocab
    corpus = load_corpus(cfg.data, cfg.val_fraction, cfg.token_dtype)
    return corpus.vocab_size or _raw_vocab(corpus)


def match_params(cfg: TrainConfig, modes: Sequence[str], how: str = "none",
                 vocab_size: Optional[int] = None
                 ) -> Tuple[Dict[str, Dict[str, Any]], Optional[Dict[str, Any]]]:
    """``(mode -> config overrides, statement)`` making the residual model's parameter
    count closest to the target mode's by widening (``how="width"``) or deepening
    (``"depth"``) it. ``how="none"`` or no residual mode: ``({}, None)``."""
    if how not in MATCH_CHOICES:
        raise ConfigError(f"match-params must be one of {', '.join(MATCH_CHOICES)}; got {how!r}")
    others = [m for m in modes if m != "residual"]
    if how == "none" or "residual" not in modes:
        return {}, None
    if not others:
        raise ConfigError("--match-params needs a mode besides residual to match against")
    target_mode = "mhc" if "mhc" in modes else others[0]
    vocab = vocab_size or _vocab(cfg)
    target = count_params(dataclasses.replace(cfg, connection=target_mode), vocab)
    base = dataclasses.replace(cfg, connection="residual")
    if how == "width":
        key = "d_model"
        step = 2 * cfg.n_head if cfg.model == "gpt" else 1
        start = cfg.d_model - cfg.d_model % step if cfg.d_model % step else cfg.d_model
    else:
        key, step, start = "n_layer", 1, cfg.n_layer
    before = count_params(base, vocab)
    best, best_count = start, count_params(dataclasses.replace(base, **{key: start}), vocab)
    value = start
    for _ in range(_MAX_SCAN):  # counts grow with width and depth: stop past the target
        value += step
        count = count_params(dataclasses.replace(base, **{key: value}), vocab)
        if abs(count - target) < abs(best_count - target):
            best, best_count = value, count
        if count >= target:
            break
    statement = {
        "how": how, "setting": key, "target_mode": target_mode, "target_params": target,
        "residual": {key: [getattr(cfg, key), best], "params": [before, best_count]},
        "text": (f"residual baseline {'widened' if how == 'width' else 'deepened'}: {key} "
                 f"{getattr(cfg, key)} -> {best} (the value "
                 + (f"in steps of {step} " if step > 1 else "")
                 + f"whose parameter count is closest to {target_mode}'s): {before:,} -> "
                 f"{best_count:,} parameters vs {target:,} for {target_mode} "
                 f"({100 * (best_count - target) / target:+.2f} %)"),
    }
    return {"residual": {key: best}}, statement


def _finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def aggregate(per_seed: Dict[str, Dict[str, Dict[str, Any]]]) -> Dict[str, Dict[str, Any]]:
    """``mode -> key -> {mean, std, min, max, n}`` over the seeds' summaries (numbers only;
    ``diverged`` and ``completed`` counted as ``{count, n}``)."""
    out: Dict[str, Dict[str, Any]] = {}
    modes = list(dict.fromkeys(m for s in per_seed.values() for m in s))
    for mode in modes:
        runs = [s[mode] for s in per_seed.values() if mode in s]
        keys = list(dict.fromkeys(k for r in runs for k in r))
        agg: Dict[str, Any] = {}
        for k in keys:
            if k in ("diverged", "completed"):
                agg[k] = {"count": sum(1 for r in runs if r.get(k)), "n": len(runs)}
                continue
            vals = [r[k] for r in runs if _finite_number(r.get(k))]
            if not vals:
                continue
            agg[k] = {"mean": statistics.fmean(vals),
                      "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                      "min": min(vals), "max": max(vals), "n": len(vals)}
        out[mode] = agg
    return out


def compare_seeds(cfg: TrainConfig, modes: Sequence[str], out, seeds: int,
                  overwrite: bool = False, resume: bool = False, report: bool = True,
                  match: str = "none") -> Dict[str, Any]:
    """Run :func:`~torch_mhc.train.compare.compare` for ``seeds`` seeds into ``out/seed-<s>``
    and write ``out/summary.json`` (aggregate and per seed), ``out/config.json`` and, with
    ``report``, ``out/report.html``. Returns the summary dict. ``resume`` resumes each
    seed's comparison by the rules of :func:`~torch_mhc.train.compare.compare` (settings
    as saved, but where it runs) and keeps ``out/config.json``; the seeds must be the
    same."""
    from .compare import _check_out, compare, parse_modes
    if seeds < 1:
        raise ConfigError(f"seeds must be >= 1, got {seeds}")
    modes = parse_modes(modes)
    cfg = cfg.validate()
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"output directory {root} is an existing file; choose another --out")
    overrides, statement = match_params(cfg, modes, match)
    seed_list = [cfg.seed + i for i in range(seeds)]
    for seed in seed_list:  # refuse before writing anything
        _check_out(root / f"seed-{seed}", overwrite, resume)
    meta = root / "config.json"
    keep_config = resume and meta.is_file()
    if keep_config:  # each seed folder checks its settings; here the seeds themselves
        try:
            saved = json.loads(meta.read_text())
        except ValueError:
            raise ConfigError(f"cannot resume the comparison in {root}: {meta} is damaged "
                              "(not the JSON mhc compare writes); start over with --overwrite"
                              ) from None
        if not isinstance(saved, dict) or saved.get("seeds") != seed_list:
            raise ConfigError(f"cannot resume the comparison in {root} with other seeds "
                              f"({saved.get('seeds') if isinstance(saved, dict) else None} there, {seed_list} now); resume without "
                              "--seeds and --seed, or start over with --overwrite")
    else:  # written first, so that an interrupted study resumes with its own settings
        write_study_config(root, seed_list, modes, config_to_dict(cfg), statement)
    per_seed: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for i, seed in enumerate(seed_list):
        print(f"== seed {seed} ({i + 1}/{seeds})", flush=True)
        per_seed[str(seed)] = compare(dataclasses.replace(cfg, seed=seed), modes,
                                      str(root / f"seed-{seed}"), overwrite=overwrite,
                                      resume=resume, report=report, mode_overrides=overrides,
                                      param_match=statement)
    summary = {"seeds": seed_list, "modes": modes, "aggregate": aggregate(per_seed),
               "per_seed": per_seed}
    (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if report:
        write_seed_report(root)
    return summary


def write_study_config(root, seeds: Sequence[int], modes: Sequence[str],
                       config: Dict[str, Any], param_match: Optional[Dict[str, Any]] = None
                       ) -> Path:
    """Write ``root/config.json``, which makes ``root`` a seed study (:func:`is_seed_study`):
    the seeds, the modes, the parameter-matching statement and the training settings (a
    :func:`config_to_dict` of the runs' config; ``out`` set to ``root``)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "config.json"
    path.write_text(json.dumps({"seeds": list(seeds), "modes": list(modes),
                                "param_match": param_match,
                                "config": {**config, "out": str(root)}}, indent=2) + "\n")
    return path


def is_seed_study(folder) -> bool:
    """True for a folder written by :func:`compare_seeds`."""
    cfg = Path(folder) / "config.json"
    try:
        return cfg.is_file() and "seeds" in json.loads(cfg.read_text())
    except (ValueError, OSError):
        return False


def _cell(a: Optional[Dict[str, Any]], spec: str) -> str:
    if not a:
        return "&ndash;"
    if "count" in a:
        return f"{a['count']} of {a['n']}"
    spec = spec or ".4g"
    if spec.endswith("d"):
        spec = ",.0f"
    f = lambda v: format(v, spec)  # noqa: E731
    return (f"{f(a['mean'])} &plusmn; {f(a['std'])}<br><span class='muted'>{f(a['min'])} "
            f"&ndash; {f(a['max'])} (n={a['n']})</span>")


def _seed_curves(root: Path, seeds, modes) -> str:
    """The report's figure of every seed's curves (``plots/seeds.png``), as HTML; empty when
    the logs hold nothing to draw."""
    from .plots import plot_seeds
    from .report import ReportError, _img, load_runs
    per_seed = {}
    for s in seeds:
        try:
            runs, _ = load_runs(root / f"seed-{s}")
        except ReportError:  # a seed not run yet
            continue
        per_seed[str(s)] = {m: runs[m] for m in modes if m in runs}
    path = plot_seeds(per_seed, root / "plots" / "seeds.png") if per_seed else None
    if path is None:
        return ""
    return ("<h2>Curves of every seed</h2>" + _img(path) + "<p class='cap'>One colour per "
            "mode, one line per seed. The gain is the paper's convention (layers l..L, "
            "averaged over the tokens of a sequence), at each diagnostics probe.</p>")


def write_seed_report(folder) -> Path:
    """``report.html`` of a multi-seed comparison from its per-seed summaries (rebuilt)."""
    from .compare import summarize_folder
    from .report import _CSS, SUMMARY_ROWS
    root = Path(folder)
    meta = json.loads((root / "config.json").read_text())
    seeds, modes = meta["seeds"], meta["modes"]
    per_seed = {str(s): summarize_folder(root / f"seed-{s}", modes) for s in seeds
                if (root / f"seed-{s}").is_dir()}
    agg = aggregate(per_seed)
    (root / "summary.json").write_text(json.dumps(
        {"seeds": seeds, "modes": modes, "aggregate": agg, "per_seed": per_seed},
        indent=2) + "\n")
    head = "".join(f"<th>{html.escape(m)}</th>" for m in modes)
    rows = "".join(f"<tr><td>{label}</td>" + "".join(
        f"<td>{_cell(agg.get(m, {}).get(k), spec)}</td>" for m in modes) + "</tr>"
        for label, k, spec in SUMMARY_ROWS if any(k in agg.get(m, {}) for m in modes))
    match = meta.get("param_match")
    match_html = (f"<p><b>Parameter matching:</b> {html.escape(match['text'])}.</p>" if match
                  else "<p>Parameter counts are not matched (each mode at the same shape; "
                       "see the parameters row).</p>")
    links = "".join(f"<li><a href='seed-{s}/report.html'>seed {s}</a></li>" for s in seeds)
    curves = _seed_curves(root, seeds, modes)
    cfg = meta.get("config", {})
    page = f"""<!doctype html><html><head><meta charset='utf-8'>
<title>torch-mhc: {html.escape(' vs '.join(modes))}, {len(seeds)} seeds</title>
<style>{_CSS}</style></head><body>
<h1>torch-mhc: {html.escape(' vs '.join(modes))} over {len(seeds)} seeds</h1>
<p class='muted'>{html.escape(str(cfg.get('model')))} preset
<b>{html.escape(str(cfg.get('preset')))}</b>, {html.escape(str(cfg.get('max_steps')))} steps
per run, optimizer {html.escape(str(cfg.get('optimizer')))}, schedule
{html.escape(str(cfg.get('lr_schedule')))}; seeds {', '.join(map(str, seeds))} (each sets the
initialisation and the data order of every mode alike).</p>
{match_html}
<h2>Summary over seeds</h2><p class='muted'>mean &plusmn; sample standard deviation, then
smallest &ndash; largest over the seeds; "of" rows count the seeds.</p>
<table class='grid'><tr><th>metric</th>{head}</tr>{rows}</table>
{curves}<h2>Per seed</h2><ul>{links}<li><a href='summary.json'>summary.json</a></li></ul>
</body></html>
"""
    out = root / "report.html"
    out.write_text(page, encoding="utf-8")
    return out
