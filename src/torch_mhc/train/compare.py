"""``mhc compare``: the same model trained with residual, HC and mHC connections, side by side.

Every mode gets the same settings, the same seed (so every weight the modes share starts
equal) and the same batches in the same order; only ``connection`` differs. Output folder:

    DIR/config.json          the shared settings and the list of modes
    DIR/<mode>/log.jsonl     each mode's log (and its checkpoints, summary.json)
    DIR/summary.json         per-mode numbers, keyed by mode
    DIR/plots/*.png          loss, gains, gradient norms, H_res heat-maps
    DIR/report.html          all of it in one page
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from tqdm import tqdm

from ..nn import MODES
from .checkpoint import CheckpointManager
from .config import (RESUME_KEYS, RUNTIME_KEYS, ConfigError, TrainConfig, config_changes,
                     config_to_dict, format_changes)
from .logs import read_log, summarize
from .trainer import Trainer

__all__ = ["compare", "parse_modes", "saved_comparison", "DEFAULT_MODES", "format_table",
           "summarize_folder"]

DEFAULT_MODES = ("residual", "hc", "mhc")


def parse_modes(modes) -> List[str]:
    """``"residual,hc,mhc"`` or a list -> validated list of modes (order kept)."""
    if isinstance(modes, str):
        modes = [m.strip() for m in modes.split(",") if m.strip()]
    modes = list(modes or [])
    if not modes:
        raise ConfigError("no modes to compare; use e.g. --modes residual,hc,mhc")
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ConfigError(f"unknown mode(s) {', '.join(bad)}; choose from {', '.join(MODES)}")
    if len(set(modes)) != len(modes):
        raise ConfigError(f"modes repeat: {', '.join(modes)}")
    return modes


def _check_out(out: Path, overwrite: bool, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output directory {out} is an existing file; choose another --out")
    if out.is_dir() and not (overwrite or resume) and (
            (out / "summary.json").exists() or any(out.glob("*/log.jsonl"))):
        raise ConfigError(f"{out} already holds a comparison; continue it with --resume, "
                          "start over with --overwrite, or choose another --out")


def saved_comparison(root) -> Optional[Tuple[Dict, List[str], Dict]]:
    """``(settings, modes, extras)`` the comparison in folder ``root`` was started with (its
    ``config.json``), or None when there is none. ``extras`` holds ``seeds`` (their number,
    for a multi-seed comparison) and ``match_params`` (``width``/``depth``) where saved."""
    f = Path(root) / "config.json"
    if not f.is_file():
        return None
    try:
        d = json.loads(f.read_text())
        extras = {}
        if "seeds" in d:
            extras["seeds"] = len(d["seeds"])
        if "param_match" in d:
            extras["match_params"] = (d["param_match"] or {}).get("how", "none")
        return dict(d["config"]), list(d["modes"]), extras
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ConfigError(f"cannot resume the comparison in {root}: {f} is damaged (not the "
                          "JSON mhc compare writes); start over with --overwrite") from None


def _check_resumable(root: Path, cfg: TrainConfig, modes: List[str],
                     mode_overrides: Optional[Dict[str, Dict]] = None,
                     param_match: Optional[Dict] = None) -> Dict:
    """Refuse ``--resume`` with settings other than the comparison's own (``config.json``),
    except where it runs (:data:`RUNTIME_KEYS`), so finished and continued modes stay
    comparable; returns the allowed changes. Each mode's log is checked too for
    :data:`RESUME_KEYS` (with that mode's ``mode_overrides``, e.g. a parameter-matched
    residual baseline): the only check for an older comparison without ``config.json``."""
    changes: Dict = {}
    saved = saved_comparison(root)
    if saved is not None:
        settings, saved_modes, extras = saved
        if "seeds" in extras:
            raise ConfigError(f"{root} holds a comparison over {extras['seeds']} seeds; resume "
                              f"it with --seeds {extras['seeds']} (or without --seeds)")
        if modes != saved_modes:
            raise ConfigError(f"cannot resume the comparison in {root} with other modes "
                              f"({','.join(saved_modes)} there, {','.join(modes)} now); "
                              "resume without --modes, or start over with --overwrite")
        match = (param_match or {}).get("how", "none")
        if extras.get("match_params", match) != match:
            raise ConfigError(f"cannot resume the comparison in {root} with other parameter "
                              f"matching ({extras['match_params']} there, {match} now); resume "
                              "without --match-params, or start over with --overwrite")
        changes = config_changes(settings, cfg, ignore=("out", "connection"))
        fixed = {k: v for k, v in changes.items() if k not in RUNTIME_KEYS}
        if fixed:
            listed = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in fixed.items())
            runtime = ", ".join("--" + k.replace("_", "-") for k in RUNTIME_KEYS)
            drop = " ".join("--" + k.replace("_", "-") for k in fixed)
            raise ConfigError(f"cannot resume the comparison in {root} with other settings "
                              f"({listed}); on resume only {runtime} may change: drop {drop}, "
                              "or start over with --overwrite (without --resume)")
    for mode in modes:
        log = root / mode / "log.jsonl"
        reused = (root / mode / "summary.json").is_file() or CheckpointManager(root / mode).latest()
        if not (log.is_file() and reused):
            continue
        records = read_log(log, skipped=[])
        header = next((r for r in reversed(records) if r.get("type") == "config"), None)
        old = (header or {}).get("config", {})
        now = dataclasses.replace(cfg, connection=mode, **(mode_overrides or {}).get(mode, {}))
        diffs = {k: v for k, v in config_changes(old, now).items() if k in RESUME_KEYS}
        if diffs:
            listed = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diffs.items())
            raise ConfigError(f"cannot resume the comparison in {root}: its {mode} run was "
                              f"made with other settings ({listed}); resume with the same "
                              "settings, or start over with --overwrite (without --resume)")
    return changes


def _fmt(v, spec: str = ".3f") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return format(v, spec)


def format_table(summary: Dict[str, Dict]) -> str:
    """A plain-text table of the main numbers per mode."""
    cols = [("train loss", "final_train_loss", ".3f"), ("val loss", "final_val_loss", ".3f"),
            ("fwd gain", "max_composite_forward_gain", ".3g"),
            ("bwd gain", "max_composite_backward_gain", ".3g"),
            ("grad deep/shallow", "grad_ratio_deepest_to_shallowest", ".3g"),
            ("diverged", "diverged", ""), ("tok/s", "tokens_per_s", ",.0f"),
            ("peak MiB", "peak_memory_mb", ",.0f")]
    rows = [["mode"] + [c[0] for c in cols]]
    for mode, s in summary.items():
        rows.append([mode] + [_fmt(s.get(k), spec) for _, k, spec in cols])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w)
                               in enumerate(zip(r, widths))) for r in rows)


def _write_config(root: Path, cfg: TrainConfig, modes: List[str],
                  param_match: Optional[Dict] = None) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(
        {"modes": modes, "param_match": param_match,
         "config": {**config_to_dict(cfg), "out": str(root)}}, indent=2) + "\n")


def summarize_folder(root: Path, modes: Sequence[str]) -> Dict[str, Dict]:
    """Per-mode summaries of the runs in a comparison folder (modes without a log left out)."""
    return {m: summarize(read_log(Path(root) / m / "log.jsonl", skipped=[])) for m in modes
            if (Path(root) / m / "log.jsonl").is_file()}


def compare(cfg: TrainConfig, modes: Sequence[str] = DEFAULT_MODES, out: Optional[str] = None,
            overwrite: bool = False, resume: bool = False, report: bool = True,
            mode_overrides: Optional[Dict[str, Dict]] = None,
            param_match: Optional[Dict] = None) -> Dict:
    """Train ``cfg`` once per mode into ``out`` and write summary.json, plots, report.html.

    ``resume=True`` continues each unfinished mode from its latest intact checkpoint and
    skips finished (or diverged) ones; the settings must be the comparison's own
    (``config.json``, which is then left as it is) except where it runs
    (:data:`RUNTIME_KEYS`). A mode that stops
    on a non-finite loss is a result (``diverged: true``), not an error, and so is running
    out of GPU memory (``error`` in its summary). Returns the summary dict keyed by mode.
    ``mode_overrides`` (mode -> settings) changes a mode's settings, e.g. a
    parameter-matched residual baseline (:func:`.seeds.match_params`, whose
    ``param_match`` statement is saved in ``config.json`` and as ``param_match.json`` for
    the report).
    """
    modes = parse_modes(modes)
    cfg = cfg.validate()
    root = Path(out or Path("runs") / f"compare-{cfg.preset}")
    _check_out(root, overwrite, resume)
    keep_config = resume and (root / "config.json").is_file()
    if resume:
        changes = _check_resumable(root, cfg, modes, mode_overrides, param_match)
        if changes:
            tqdm.write(f"resuming the comparison in {root}; changed for its unfinished modes: "
                       f"{format_changes(changes)}")
    summary: Dict[str, Dict] = {}
    for i, mode in enumerate(modes):
        run_dir = root / mode
        mcfg = dataclasses.replace(cfg, connection=mode, out=str(run_dir),
                                   **(mode_overrides or {}).get(mode, {})).validate()
        done = run_dir / "summary.json"
        if resume and done.is_file():
            try:
                prev = json.loads(done.read_text())
            except ValueError:  # a damaged summary: the mode's checkpoint rebuilds it
                prev = {}
            # a diverged mode is a result too; one that ran out of memory is tried again
            if (prev.get("completed") or prev.get("diverged")) \
                    and prev.get("max_steps") == mcfg.max_steps:
                tqdm.write(f"[{i + 1}/{len(modes)}] {mode}: already finished, skipped")
                summary[mode] = prev
                continue
        has_ckpt = resume and CheckpointManager(run_dir).latest() is not None
        tqdm.write(f"[{i + 1}/{len(modes)}] {mode}")
        trainer = Trainer(mcfg, resume=str(run_dir) if has_ckpt else None,
                          overwrite=overwrite or (resume and not has_ckpt), desc=mode)
        if not keep_config:  # the inputs are good: now write
            _write_config(root, cfg, modes, param_match)
        try:
            trainer.fit()
        except torch.cuda.OutOfMemoryError:
            tqdm.write(f"{mode}: out of memory; recorded, going on with the next mode")
        summary[mode] = summarize(read_log(run_dir / "log.jsonl", skipped=[]))
    if not keep_config:
        _write_config(root, cfg, modes, param_match)
    if param_match:
        (root / "param_match.json").write_text(json.dumps(param_match, indent=2) + "\n")
    (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if report:
        from .report import write_report
        write_report(root)
    return summary
