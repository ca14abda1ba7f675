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
from typing import Dict, List, Optional, Sequence

import torch
from tqdm import tqdm

from ..nn import MODES
from .checkpoint import CheckpointManager
from .config import RESUME_KEYS, ConfigError, TrainConfig, config_to_dict
from .logs import read_log, summarize
from .trainer import Trainer

__all__ = ["compare", "parse_modes", "DEFAULT_MODES", "format_table", "summarize_folder"]

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


def _check_resumable(root: Path, cfg: TrainConfig, modes: List[str],
                     mode_overrides: Optional[Dict[str, Dict]] = None) -> None:
    """Refuse ``--resume`` when a mode already in ``root`` was run with other settings
    (a finished mode would otherwise be kept and reported under the new config)."""
    for mode in modes:
        log = root / mode / "log.jsonl"
        reused = (root / mode / "summary.json").is_file() or CheckpointManager(root / mode).latest()
        if not (log.is_file() and reused):
            continue
        try:
            records = read_log(log)
        except ValueError as e:
            raise ConfigError(f"cannot resume the comparison in {root}: {e}") from None
        header = next((r for r in reversed(records) if r.get("type") == "config"), None)
        saved = (header or {}).get("config", {})
        now = config_to_dict(dataclasses.replace(cfg, connection=mode,
                                                 **(mode_overrides or {}).get(mode, {})))
        diffs = [f"{k}: {saved.get(k)!r} there, {now.get(k)!r} now" for k in RESUME_KEYS
                 if k in saved and saved.get(k) != now.get(k)]
        if diffs:
            raise ConfigError(f"cannot resume the comparison in {root}: its {mode} run was "
                              f"made with other settings ({'; '.join(diffs)}); resume with "
                              "the same settings, or start over with --overwrite (without "
                              "--resume)")


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


def _write_config(root: Path, cfg: TrainConfig, modes: List[str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(
        {"modes": modes, "config": {**config_to_dict(cfg), "out": str(root)}}, indent=2) + "\n")


def summarize_folder(root: Path, modes: Sequence[str]) -> Dict[str, Dict]:
    """Per-mode summaries of the runs in a comparison folder (modes without a log left out)."""
    return {m: summarize(read_log(Path(root) / m / "log.jsonl")) for m in modes
            if (Path(root) / m / "log.jsonl").is_file()}


def compare(cfg: TrainConfig, modes: Sequence[str] = DEFAULT_MODES, out: Optional[str] = None,
            overwrite: bool = False, resume: bool = False, report: bool = True,
            mode_overrides: Optional[Dict[str, Dict]] = None,
            param_match: Optional[Dict] = None) -> Dict:
    """Train ``cfg`` once per mode into ``out`` and write summary.json, plots, report.html.

    ``resume=True`` continues each unfinished mode from its latest checkpoint and skips
    finished ones. A mode that stops on a non-finite loss is a result (``diverged: true``),
    not an error, and so is running out of GPU memory (``error`` in its summary). Returns
    the summary dict keyed by mode. ``mode_overrides`` (mode -> settings) changes a mode's
    settings, e.g. a parameter-matched residual baseline (:func:`.seeds.match_params`,
    whose ``param_match`` statement is saved as ``param_match.json`` for the report).
    """
    modes = parse_modes(modes)
    cfg = cfg.validate()
    root = Path(out or Path("runs") / f"compare-{cfg.preset}")
    _check_out(root, overwrite, resume)
    if resume:
        _check_resumable(root, cfg, modes, mode_overrides)
    for i, mode in enumerate(modes):
        run_dir = root / mode
        mcfg = dataclasses.replace(cfg, connection=mode, out=str(run_dir),
                                   **(mode_overrides or {}).get(mode, {})).validate()
        done = run_dir / "summary.json"
        if resume and done.is_file():
            prev = json.loads(done.read_text())
            if prev.get("completed") and prev.get("max_steps") == cfg.max_steps:
                tqdm.write(f"[{i + 1}/{len(modes)}] {mode}: already finished, skipped")
                continue
        latest = CheckpointManager(run_dir).latest() if resume else None
        tqdm.write(f"[{i + 1}/{len(modes)}] {mode}")
        trainer = Trainer(mcfg, resume=str(latest) if latest else None,
                          overwrite=overwrite or (resume and latest is None), desc=mode)
        _write_config(root, cfg, modes)  # the inputs are good: now write
        try:
            trainer.fit()
        except torch.cuda.OutOfMemoryError:
            tqdm.write(f"{mode}: out of memory; recorded, going on with the next mode")
    _write_config(root, cfg, modes)
    if param_match:
        (root / "param_match.json").write_text(json.dumps(param_match, indent=2) + "\n")
    summary = summarize_folder(root, modes)
    (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if report:
        from .report import write_report
        write_report(root)
    return summary
