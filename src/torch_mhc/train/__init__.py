"""Training and comparing: ``mhc train``, ``mhc compare``, ``mhc report``.

* :class:`TrainConfig`, :data:`PRESETS`, :func:`resolve_config` -- settings.
* :class:`Trainer`, :func:`train` -- one run (logs, checkpoints, diagnostics).
* :func:`compare` -- residual, HC and mHC variants of one model side by side.
* :func:`write_report` -- plots and ``report.html`` from the logs of a run or comparison.
"""
from .._extras import require

require("the trainer (mhc train, compare, report)")  # names the extra that brings what is missing

from .checkpoint import CheckpointError, CheckpointManager  # noqa: E402
from .config import PRESETS, ConfigError, TrainConfig, load_config_file, resolve_config  # noqa: E402
from .trainer import Trainer, build_model, lr_at, train  # noqa: E402

__all__ = ["TrainConfig", "PRESETS", "ConfigError", "CheckpointError", "CheckpointManager",
           "resolve_config", "load_config_file", "Trainer", "train", "build_model", "lr_at"]
