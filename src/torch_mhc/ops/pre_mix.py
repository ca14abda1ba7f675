"""Pre-mix: the branch input ``h = H_pre x`` (Eq. 3), n streams -> one."""
from __future__ import annotations

import torch

from ._backend import resolve_backend

__all__ = ["pre_mix", "pre_mix_reference"]


def pre_mix_reference(x: torch.Tensor, h_pre: torch.Tensor) -> torch.Tensor:
    """``sum_i H_pre[..., i] * x[..., i, :]`` in float32, returned in ``x``'s dtype."""
    return torch.einsum("...i,...ic->...c", h_pre.float(), x.float()).to(x.dtype)


def pre_mix(x: torch.Tensor, h_pre: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Branch input from streams ``x (..., n, C)`` and weights ``h_pre (..., n)``."""
    if resolve_backend(backend, x) == "triton":
        raise NotImplementedError("the fused Triton pre-mix kernel is not available yet")
    return pre_mix_reference(x, h_pre)
