"""Optional dependencies: the core needs only torch and safetensors; the trainer, reports and
loggers need extras (``pip install 'torch-mhc[train]'``). A missing one is reported in one line.
"""
from __future__ import annotations

import importlib.util
import sys
from typing import Sequence

__all__ = ["MissingExtraError", "TRAIN_MODULES", "available", "require"]

#: Modules the ``train`` extra installs (trainer, data, compare, report, plots).
TRAIN_MODULES = ("numpy", "tqdm", "matplotlib") + (("tomli",) if sys.version_info < (3, 11) else ())


class MissingExtraError(ImportError):
    """A feature needs optional dependencies (``missing``) that are not installed; the
    message says which extra (``extra``) brings them."""

    def __init__(self, message: str, missing: Sequence[str] = (), extra: str = ""):
        super().__init__(message)
        self.missing, self.extra = list(missing), extra


def available(module: str) -> bool:
    """True when ``module`` can be imported (without importing it)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(feature: str, modules: Sequence[str] = TRAIN_MODULES, extra: str = "train") -> None:
    """Raise :class:`MissingExtraError` naming ``feature``, the missing ``modules`` and the
    ``pip install`` that brings them, unless all are importable."""
    missing = [m for m in modules if not available(m)]
    if missing:
        raise MissingExtraError(
            f"{feature} needs {', '.join(missing)}, not installed: "
            f"pip install 'torch-mhc[{extra}]'", missing, extra)
