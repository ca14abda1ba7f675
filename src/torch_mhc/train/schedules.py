"""Learning-rate schedules and optimizer presets of ``mhc train`` / ``mhc compare``.

Two schedules (``--lr-schedule``), both after a linear warm-up of ``warmup_steps``:

* ``cosine`` -- cosine decay from ``lr`` to ``lr * min_lr_ratio`` at ``max_steps``;
* ``step`` -- the mHC paper's step decay (arXiv 2512.24880, Table 5): the peak rate until
  80 % of training, then 0.316 x peak, from 90 % on 0.1 x peak. The factors are read as
  fractions of the peak (0.316 ~ sqrt(0.1): two equal drops of ~1/sqrt(10)), not as
  successive multipliers (which would end at 0.0316 x peak).

Two optimizer presets (``--optimizer``):

* ``default`` -- the settings of the fields (AdamW betas 0.9/0.95, eps 1e-8, weight decay
  0.1, warm-up from the model preset, cosine decay);
* ``paper`` -- Table 5 of the paper: AdamW betas (0.9, 0.95), eps 1e-20, weight decay 0.1,
  step decay at 0.8 / 0.9 of training by 0.316 / 0.1, and the paper's warm-up of 2000 of
  its 50,000 steps kept as a fraction (4 % of ``max_steps``, at least one step), so that a
  short run is not all warm-up. The paper does not state the peak learning rate of its
  smaller runs nor a gradient clip, so ``lr`` (from the model preset) and ``grad_clip`` keep
  their values.

Precedence: defaults < model preset < optimizer preset < config file < flags, so e.g.
``--optimizer paper --warmup-steps 100`` keeps everything of the preset but the warm-up.
"""
from __future__ import annotations

import math
from typing import Any, Collection, Dict

__all__ = ["SCHEDULES", "OPTIMIZER_PRESETS", "PAPER_DECAY", "PAPER_WARMUP_FRACTION",
           "lr_at", "apply_optimizer_preset"]

SCHEDULES = ("cosine", "step")
# (fraction of max_steps from which it applies, learning rate as a fraction of the peak)
PAPER_DECAY = ((0.8, 0.316), (0.9, 0.1))
PAPER_WARMUP_FRACTION = 2000 / 50000  # Table 5: 2000 warm-up steps of 50k (27B model)

OPTIMIZER_PRESETS: Dict[str, Dict[str, Any]] = {
    "default": {},
    "paper": dict(beta1=0.9, beta2=0.95, adam_eps=1e-20, weight_decay=0.1,
                  lr_schedule="step"),
}


def lr_at(step: int, cfg) -> float:
    """Learning rate of optimizer step ``step`` (0-based) under ``cfg.lr_schedule``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if getattr(cfg, "lr_schedule", "cosine") == "step":
        scale = 1.0
        for frac, value in PAPER_DECAY:
            if step >= round(frac * cfg.max_steps):
                scale = value
        return cfg.lr * scale
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - min_lr)


def apply_optimizer_preset(values: Dict[str, Any], explicit: Collection[str]
                           ) -> Dict[str, Any]:
    """``values`` with the optimizer preset ``values["optimizer"]`` applied to every key not
    in ``explicit`` (the keys a config file or a flag set). Unknown names are left for
    ``TrainConfig.validate`` to reject."""
    name = values.get("optimizer", "default")
    preset = OPTIMIZER_PRESETS.get(name)
    if not preset:
        return values
    out = dict(values)
    out.update({k: v for k, v in preset.items() if k not in explicit})
    if name == "paper" and "warmup_steps" not in explicit and "max_steps" in out:
        out["warmup_steps"] = max(1, round(PAPER_WARMUP_FRACTION * int(out["max_steps"])))
    return out
