"""Helpers for testing fast paths against the references (used by the test suite)."""
from __future__ import annotations

import contextlib
import os

import torch

__all__ = ["rel_error", "triton_interpreter"]


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` in float64 (``b`` is the reference)."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@contextlib.contextmanager
def triton_interpreter(enabled: bool = True):
    """Run Triton kernels in Triton's CPU interpreter (``TRITON_INTERPRET=1``) inside the block.

    The fused kernels are compiled lazily per mode, so this works even when Triton was
    imported before. A no-op when ``enabled`` is False (e.g. with a GPU present).
    """
    if not enabled:
        yield
        return
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old
