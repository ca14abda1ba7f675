"""Experiment trackers behind one small interface: TensorBoard, Weights & Biases, trackio.

Every tracker is a :class:`Logger`: it receives the records :class:`~torch_mhc.train.logs.RunLog`
writes to ``log.jsonl`` (``config``, ``train``, ``eval``, ``diag``, ``event``, ``end``) and
shows what it can of them. :func:`scalars` turns one record into the tag -> value pairs all of
them log, per-layer diagnostics included (``<metric>_per_layer/<connection>``); TensorBoard
adds histograms over the connections and an ``H_res`` heat-map image.

* TensorBoard (``pip install 'torch-mhc[tensorboard]'``): on by default when installed
  (``--no-tensorboard`` turns it off), in ``<out>/tensorboard``.
* Weights & Biases (``[wandb]``) or trackio (``[trackio]``): ``--tracker wandb|trackio``;
  project from ``WANDB_PROJECT`` / ``TRACKIO_PROJECT`` (default ``torch-mhc``), run name
  ``<parent folder>/<run folder>`` of ``--out``.
"""
from __future__ import annotations

import importlib
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Protocol

import torch

from .._extras import available
from .config import ConfigError

__all__ = ["Logger", "TRACKERS", "scalars", "per_layer", "hres_image", "TensorBoardLogger",
           "WandbLogger", "check_tracker", "make_loggers"]

#: ``--tracker`` choices besides ``none``: the module each needs (= its extra's name).
TRACKERS = ("wandb", "trackio")

# per-layer lists of a ``diag`` record: tag -> (section, key) (section None: top level)
_PER_LAYER = {
    "composite_forward_gain": ("gain", "comp_fwd_max"),
    "forward_gain": ("gain", "fwd_max"),
    "grad_param_norm": (None, "grad_param"),
}


class Logger(Protocol):
    """What :class:`~torch_mhc.train.logs.RunLog` hands every record to."""

    def log(self, record: Dict[str, Any]) -> None:
        """Show one record (the dict written to ``log.jsonl``)."""

    def close(self) -> None:
        """Flush and release; no record follows."""


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def per_layer(record: Dict[str, Any]) -> Dict[str, List[float]]:
    """The per-connection lists of a ``diag`` record, by metric name (empty lists dropped)."""
    out = {}
    for name, (section, key) in _PER_LAYER.items():
        src = record.get(section) if section else record
        vals = (src or {}).get(key) if isinstance(src, dict) else None
        if vals:
            out[name] = [float(v) for v in vals]
    return out


def scalars(record: Dict[str, Any]) -> Dict[str, float]:
    """Tag -> finite value of one record; ``{}`` for records without a step or scalars."""
    kind = record.get("type")
    out: Dict[str, Any] = {}
    if kind == "train":
        out = {f"train/{k}": record.get(k) for k in ("loss", "lr", "grad_norm", "tokens_per_s")}
    elif kind == "eval":
        out = {"val/loss": record.get("val_loss")}
    elif kind == "diag":
        g = record.get("gain") or {}
        for tag, key in (("composite_forward_gain", "comp_fwd_max"),
                         ("composite_backward_gain", "comp_bwd_max"),
                         ("composite_forward_gain_to_output", "out_fwd_max"),
                         ("single_layer_forward_gain", "fwd_max")):
            if g.get(key):
                out[f"diag/{tag}"] = max(g[key])
        hres = record.get("hres") or {}
        if hres.get("dist_identity"):
            out["diag/hres_dist_identity_mean"] = sum(hres["dist_identity"]) / len(hres["dist_identity"])
        for key in ("row_err_max", "col_err_max"):
            if hres.get(key):
                out[f"diag/hres_{key}"] = max(hres[key])
        for key in ("loss", "grad_param_ratio", "grad_stream_ratio"):
            out[f"diag/{'probe_loss' if key == 'loss' else key}"] = record.get(key)
        for name, vals in per_layer(record).items():
            out.update({f"{name}_per_layer/{i:03d}": v for i, v in enumerate(vals)})
    return {k: float(v) for k, v in out.items() if _finite(v)}


def hres_image(hres_mean, cell: int = 8) -> Optional[torch.Tensor]:
    """``(3, H, W)`` image in [0, 1] of the token-averaged ``H_res`` of every connection,
    tiled left to right, top to bottom (one ``n x n`` block of ``cell`` pixels per entry,
    a 1-pixel gap between blocks): red for positive entries, blue for negative, saturating
    at 1 (a doubly stochastic ``H_res`` is all red shades)."""
    if not hres_mean:
        return None
    mats = torch.tensor(hres_mean, dtype=torch.float32)  # (L, n, n)
    count, n = mats.shape[0], mats.shape[-1]
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    size = n * cell + 1
    img = torch.ones(3, rows * size + 1, cols * size + 1) * 0.5  # grey gaps and padding
    for k, m in enumerate(mats):
        block = m.repeat_interleave(cell, 0).repeat_interleave(cell, 1)
        rgb = torch.stack([block.clamp(0, 1), torch.zeros_like(block), (-block).clamp(0, 1)])
        r, c = divmod(k, cols)
        img[:, 1 + r * size:1 + r * size + n * cell, 1 + c * size:1 + c * size + n * cell] = rgb
    return img


class TensorBoardLogger:
    """Scalars (per-layer included), histograms over the connections and the ``H_res``
    heat-map, in ``log_dir``."""

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(log_dir))

    def log(self, record: Dict[str, Any]) -> None:
        """Write the record's scalars; for ``diag`` also histograms and the heat-map."""
        step = record.get("step")
        if step is None:
            return
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, step)
        if record.get("type") != "diag":
            return
        for name, vals in per_layer(record).items():
            self.writer.add_histogram(f"hist/{name}", torch.tensor(vals, dtype=torch.float64), step)
        if record.get("hres_mean"):
            entries = torch.tensor(record["hres_mean"], dtype=torch.float64).flatten()
            self.writer.add_histogram("hist/hres_entries", entries, step)
            self.writer.add_image("hres/mean_per_connection", hres_image(record["hres_mean"]),
                                  step)

    def close(self) -> None:
        """Flush the event file."""
        self.writer.close()


class WandbLogger:
    """Weights & Biases, or trackio (same API): a run started at the first record (with the
    settings of a ``config`` record), every record's scalars logged at its step."""

    def __init__(self, module: str, name: Optional[str] = None):
        self.module = importlib.import_module(module)
        self.project = os.environ.get(f"{module.upper()}_PROJECT", "torch-mhc")
        self.name, self.run = name, None

    def log(self, record: Dict[str, Any]) -> None:
        """Start the run if needed, then log the record's scalars."""
        if self.run is None:
            cfg = record.get("config") if record.get("type") == "config" else None
            self.run = self.module.init(project=self.project, name=self.name, config=cfg)
        values = scalars(record)
        if values and record.get("step") is not None:
            self.module.log(values, step=int(record["step"]))

    def close(self) -> None:
        """Finish the run."""
        if self.run is not None:
            self.module.finish()
            self.run = None


def check_tracker(tracker: str) -> None:
    """Raise :class:`~torch_mhc.train.config.ConfigError` unless ``tracker`` is ``none`` or
    a known tracker that is installed (the message says how to install it)."""
    if tracker not in ("none", *TRACKERS):
        raise ConfigError(f"tracker must be one of none, {', '.join(TRACKERS)}; got {tracker!r}")
    if tracker != "none" and not available(tracker):
        raise ConfigError(f"--tracker {tracker} needs {tracker}, not installed: "
                          f"pip install 'torch-mhc[{tracker}]'")


def make_loggers(out: Path, tensorboard: bool = False, tracker: str = "none") -> List[Logger]:
    """The trackers for a run writing to ``out``: TensorBoard if asked and installed, and
    ``tracker`` (``none``, ``wandb``, ``trackio``), which must be installed."""
    check_tracker(tracker)
    loggers: List[Logger] = []
    if tensorboard and available("tensorboard"):
        loggers.append(TensorBoardLogger(Path(out) / "tensorboard"))
    if tracker != "none":
        out = Path(out).resolve()
        loggers.append(WandbLogger(tracker, f"{out.parent.name}/{out.name}"))
    return loggers
