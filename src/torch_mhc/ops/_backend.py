"""Backend selection shared by the ops: ``"torch"`` (reference), ``"triton"`` (fused), ``"auto"``."""
from __future__ import annotations

import functools

import torch

BACKENDS = ("auto", "torch", "triton")


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when Triton imports (the kernels also run on CPU under ``TRITON_INTERPRET=1``)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # pragma: no cover - depends on the install
        return False
    return True


def interpret_mode() -> bool:
    """True when Triton runs its CPU interpreter (``TRITON_INTERPRET=1``)."""
    import os
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_backend(backend: str) -> str:
    """Validate a backend name and return it."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    return backend


def resolve_backend(backend: str, x: torch.Tensor) -> str:
    """Turn ``"auto"`` into ``"triton"`` on CUDA with Triton installed, else ``"torch"``."""
    check_backend(backend)
    if backend == "auto":
        return "triton" if (x.is_cuda and triton_available()) else "torch"
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' needs Triton: pip install 'torch-mhc[triton]'")
        if not x.is_cuda and not interpret_mode():
            raise RuntimeError(
                "backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for the CPU "
                "interpreter); use backend='auto' to fall back to the PyTorch reference")
    return backend
