"""Run logs: one JSON object per line (``log.jsonl``), the trackers, and summaries.

Record types (``"type"``): ``config`` (settings, model size, data), ``train`` (one optimizer
step: loss, lr, grad_norm, clipped, tokens_per_s, ...), ``eval`` (validation loss),
``diag`` (diagnostics of :func:`torch_mhc.diagnostics.probe_diagnostics`), ``event``
(resume, non-finite loss, skip, stop) and ``end`` (wall time, throughput, peak memory).
``summarize`` turns one run's records into the numbers ``summary.json`` holds, so
``mhc report`` can rebuild everything from the logs alone.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..diagnostics import find_spikes
from .trackers import Logger, TensorBoardLogger, make_loggers

__all__ = ["RunLog", "read_log", "clean_json", "summarize", "TRAIN_LOSS_WINDOW"]

TRAIN_LOSS_WINDOW = 10  # final_train_loss: mean of the last this many logged steps


def clean_json(obj: Any) -> Any:
    """Replace NaN/Inf by None (strict JSON) and tuples by lists, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    return obj


class RunLog:
    """Appends records to ``path`` (main process only) and hands each to the trackers
    (:mod:`torch_mhc.train.trackers`): TensorBoard when ``tensorboard`` and installed, W&B or
    trackio when ``tracker`` names one."""

    def __init__(self, path: Path, enabled: bool = True, tensorboard: bool = False,
                 tracker: str = "none"):
        self.path, self.enabled = Path(path), enabled
        self.loggers: List[Logger] = (make_loggers(self.path.parent, tensorboard, tracker)
                                      if enabled else [])

    @property
    def tensorboard_enabled(self) -> bool:
        """True when records also go to TensorBoard."""
        return any(isinstance(lg, TensorBoardLogger) for lg in self.loggers)

    def write(self, record: Dict[str, Any]) -> None:
        """Append one record (and flush, so a crash loses nothing already written)."""
        if not self.enabled:
            return
        record = clean_json(record)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        for lg in self.loggers:
            lg.log(record)

    def close(self) -> None:
        """Flush and close the trackers (idempotent)."""
        loggers, self.loggers = self.loggers, []
        for lg in loggers:
            lg.close()


def read_log(path, skipped: Optional[List[int]] = None) -> List[Dict[str, Any]]:
    """All records of a ``log.jsonl``.

    A torn last line (a crash mid-write) is ignored. Any other line that is not a JSON
    object raises ``ValueError``, unless ``skipped`` is a list: then every unreadable line
    (the torn last one included) is left out and its number (1-based) appended to it.
    """
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError
            out.append(record)
        except ValueError:  # json.JSONDecodeError is a ValueError
            if skipped is not None:
                skipped.append(i + 1)
            elif i < len(lines) - 1:
                raise ValueError(f"{path}: line {i + 1} is not valid JSON") from None
    return out


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _last(records, kind) -> Optional[Dict[str, Any]]:
    return next((r for r in reversed(records) if r.get("type") == kind), None)


def _paper_and_step_metrics(diags, train) -> Dict[str, Any]:
    """Paper-convention gains (layers l..L, token mean per sequence) over the diagnostics,
    and the per-step last/first gradient ratio and mean ||H_res||_F (absent in older logs)."""
    s: Dict[str, Any] = {}
    for name, key in (("forward", "comp_fwd_peak"), ("backward", "comp_bwd_peak")):
        vals = [d["paper_gain"][key] for d in diags if d.get("paper_gain")]
        s[f"paper_composite_{name}_gain_max"] = max(vals) if vals else None
        s[f"paper_composite_{name}_gain_final"] = vals[-1] if vals else None
    for key, name in (("grad_ratio_last_first", "step_grad_ratio_last_first"),
                      ("hres_fro_mean", "step_hres_fro_mean")):
        vals = [r[key] for r in train if _finite(r.get(key))]
        s[f"{name}_final"] = statistics.fmean(vals[-TRAIN_LOSS_WINDOW:]) if vals else None
        s[f"{name}_min"] = min(vals) if vals else None
        s[f"{name}_max"] = max(vals) if vals else None
    return s


def summarize(records: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The per-run numbers of ``summary.json`` from the records of one run's log."""
    header = _last(records, "config") or {}
    cfg = header.get("config", {})
    train = [r for r in records if r.get("type") == "train"]
    evals = [r for r in records if r.get("type") == "eval" and _finite(r.get("val_loss"))]
    diags = [r for r in records if r.get("type") == "diag"]
    events = [r for r in records if r.get("type") == "event"]
    end = _last(records, "end") or {}
    losses = [r["loss"] for r in train if _finite(r.get("loss"))]
    gnorms = [r.get("grad_norm") for r in train]
    s: Dict[str, Any] = {
        "mode": cfg.get("connection"), "model": cfg.get("model"), "preset": cfg.get("preset"),
        "streams": header.get("streams"), "params": header.get("params"),
        "steps": train[-1]["step"] if train else 0, "max_steps": cfg.get("max_steps"),
        "tokens": train[-1].get("tokens") if train else 0,
        "final_train_loss": (statistics.fmean(losses[-TRAIN_LOSS_WINDOW:]) if losses else None),
        "last_train_loss": losses[-1] if losses else None,
        "final_val_loss": evals[-1]["val_loss"] if evals else None,
        "best_val_loss": min(r["val_loss"] for r in evals) if evals else None,
    }
    gain_keys = {"forward": "comp_fwd_max", "backward": "comp_bwd_max"}
    for name, key in gain_keys.items():
        vals = [max(d["gain"][key]) for d in diags if d.get("gain")]
        single = [max(d["gain"][key.replace("comp_", "")]) for d in diags if d.get("gain")]
        s[f"max_composite_{name}_gain"] = max(vals) if vals else None
        s[f"final_composite_{name}_gain"] = vals[-1] if vals else None
        s[f"max_single_layer_{name}_gain"] = max(single) if single else None
        # the paper's direction (layers l..L, Fig. 3); absent in logs of older versions
        out = [max(d["gain"][key.replace("comp_", "out_")]) for d in diags
               if d.get("gain") and key.replace("comp_", "out_") in d["gain"]]
        s[f"max_composite_{name}_gain_to_output"] = max(out) if out else None
    last = diags[-1] if diags else {}
    s["final_composite_forward_gain_token_mean"] = (
        max(last["gain"]["comp_fwd_mean"]) if last.get("gain") else None)
    s["grad_ratio_deepest_to_shallowest"] = last.get("grad_param_ratio")
    s["stream_grad_ratio_deepest_to_shallowest"] = last.get("grad_stream_ratio")
    hres = last.get("hres")
    s["hres_row_err_max"] = max(hres["row_err_max"]) if hres else None
    s["hres_col_err_max"] = max(hres["col_err_max"]) if hres else None
    s["hres_dist_identity_mean"] = (statistics.fmean(hres["dist_identity"])
                                    if hres else None)
    s.update(_paper_and_step_metrics(diags, train))
    stops = [e for e in events if e.get("event") == "stop"]
    s["diverged"] = bool(stops)
    s["diverged_at_step"] = stops[-1].get("step") if stops else None
    s["skipped_steps"] = sum(1 for e in events if e.get("event") == "skip")
    errors = [e for e in events if e.get("event") == "error"]
    s["error"] = errors[-1].get("reason") if errors else None
    finite_g = [g for g in gnorms if _finite(g)]
    s["grad_norm_max"] = max(finite_g) if finite_g else None
    s["grad_norm_spikes"] = len(find_spikes(gnorms))
    s["clipped_fraction"] = (sum(1 for r in train if r.get("clipped")) / len(train)
                             if train else None)
    tps = [r["tokens_per_s"] for r in train[2:] if _finite(r.get("tokens_per_s"))]
    s["tokens_per_s"] = statistics.median(tps) if tps else end.get("tokens_per_s")
    s["peak_memory_mb"] = end.get("peak_memory_mb")
    s["memory_kind"] = end.get("memory_kind")
    s["wall_time_s"] = end.get("wall_time_s", train[-1].get("elapsed_s") if train else None)
    s["device"] = header.get("device")
    s["dtype"] = header.get("dtype")
    s["completed"] = (bool(end) and not s["diverged"] and not s["error"]
                      and s["steps"] == s["max_steps"])
    return clean_json(s)
