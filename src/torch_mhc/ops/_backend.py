"""Dispatch rules shared by the ops: the backend (``"torch"`` reference, ``"triton"`` fused,
``"auto"``), whether a tested Triton is installed, and the stream layouts the kernels take.

The Triton launcher itself is ``_launch``; the launch configurations are ``tuning``."""
from __future__ import annotations

import os
import re
import warnings
from typing import Optional

import torch

BACKENDS = ("auto", "torch", "triton")


_TRITON_OK: Optional[bool] = None
_TRITON_WHY = "needs Triton: pip install 'torch-mhc[triton]'"  # why the kernels are off

#: Triton releases the fused kernels are tested with: first tested, first untested. They
#: compile for sm_90 and pass the tests with 3.4 .. 3.9; 3.3 and older were found to reject
#: the dx pass. Outside the range ``"auto"`` runs the PyTorch path.
TRITON_TESTED = ((3, 4), (3, 10))
TRITON_RANGE = ">={}.{},<{}.{}".format(*TRITON_TESTED[0], *TRITON_TESTED[1])


def env_flag(name: str, default: bool) -> bool:
    """An on/off environment switch: unset gives ``default``; ``""`` and ``"0"`` are off,
    anything else on."""
    return os.environ.get(name, "1" if default else "0") not in ("", "0")


def triton_version_ok(version: str) -> bool:
    """True for a Triton version in :data:`TRITON_TESTED`, or any with
    ``TORCH_MHC_UNTESTED_TRITON=1``."""
    if env_flag("TORCH_MHC_UNTESTED_TRITON", False):
        return True
    m = re.match(r"(\d+)\.(\d+)", version)
    return bool(m) and TRITON_TESTED[0] <= (int(m[1]), int(m[2])) < TRITON_TESTED[1]


@torch.compiler.assume_constant_result  # a first call inside a compiled model: no tracing
def triton_available() -> bool:
    """True when a tested Triton imports (the kernels also run on CPU under
    ``TRITON_INTERPRET=1``); an untested one gives one warning and False."""
    global _TRITON_OK, _TRITON_WHY
    if _TRITON_OK is None:  # a plain global, not lru_cache: torch.compile traces this quietly
        try:
            import triton
            import triton.language  # noqa: F401
            version = getattr(triton, "__version__", "unknown")
        except Exception:  # pragma: no cover - depends on the install
            _TRITON_OK = False
            return _TRITON_OK
        _TRITON_OK = triton_version_ok(version)
        if not _TRITON_OK:
            _TRITON_WHY = (f"needs a tested Triton ({TRITON_RANGE}), found {version}: "
                           f"pip install 'triton{TRITON_RANGE}', or set "
                           "TORCH_MHC_UNTESTED_TRITON=1 to try this one")
            warnings.warn(f"torch_mhc: Triton {version} is outside the tested range "
                          f"{TRITON_RANGE}; the fused kernels are off and backend='auto' runs "
                          "the PyTorch path (TORCH_MHC_UNTESTED_TRITON=1 tries them)")
    return _TRITON_OK


def interpret_mode() -> bool:
    """True when Triton runs its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")  # (hot: no extra call)


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
            raise RuntimeError(f"backend='triton' {_TRITON_WHY}")
        if not x.is_cuda and not interpret_mode():
            raise RuntimeError(
                "backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for the CPU "
                "interpreter); use backend='auto' to fall back to the PyTorch reference")
    return backend


# -- the layouts and dtypes the fused ops take --------------------------------------------------

def is_broadcast(t: Optional[torch.Tensor]) -> bool:
    """True for ``(T, n, C)`` streams that are one ``(T, C)`` tensor seen ``n`` times (stream
    stride 0, as :func:`torch_mhc.expand_streams` returns them): the kernels then read each
    element once instead of ``n`` times."""
    return (t is not None and t.dim() == 3 and t.shape[1] > 1 and t.stride(1) == 0
            and t.stride(2) == 1 and (t.shape[0] == 1 or t.stride(0) == t.shape[2]))


def as_streams(t: torch.Tensor) -> torch.Tensor:
    """Streams ``(..., n, C)`` in a layout the kernels take: contiguous (kept as it is, with
    any leading dimensions), or a ``(T, n, C)`` broadcast view (:func:`is_broadcast`);
    anything else is copied."""
    if t.is_contiguous():
        return t
    if t.dim() != 3:
        t = t.reshape(-1, *t.shape[-2:])
    return t if is_broadcast(t) else t.contiguous()


def kernel_impl(x: torch.Tensor) -> str:
    """What a fused op runs on streams ``x``: ``"triton"`` where the kernels can (CUDA or
    the interpreter, Triton installed, not float64), else ``"torch"``, the PyTorch twins
    of the same decomposition (exact float64 for gradcheck; any device)."""
    ok = x.dtype != torch.float64 and (x.is_cuda or interpret_mode()) and triton_available()
    return "triton" if ok else "torch"


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32: the reference ops never compute in
    bf16/fp16 and never drop a float64 input to float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
