"""Post + residual merge: ``x_{l+1} = H_res x_l + H_post^T y`` (Eq. 3)."""
from __future__ import annotations

import torch

from ._backend import resolve_backend

__all__ = ["post_res", "post_res_reference"]


def post_res_reference(x: torch.Tensor, y: torch.Tensor, h_post: torch.Tensor,
                       h_res: torch.Tensor) -> torch.Tensor:
    """``out_i = sum_j H_res[i, j] x_j + H_post[i] y`` in float32, returned in ``x``'s dtype."""
    mixed = torch.einsum("...ij,...jc->...ic", h_res.float(), x.float())
    return (mixed + h_post.float().unsqueeze(-1) * y.float().unsqueeze(-2)).to(x.dtype)


def post_res(x: torch.Tensor, y: torch.Tensor, h_post: torch.Tensor, h_res: torch.Tensor,
             backend: str = "auto") -> torch.Tensor:
    """Next streams from streams ``x (..., n, C)``, branch output ``y (..., C)`` and mappings."""
    if resolve_backend(backend, x) == "triton":
        raise NotImplementedError("the fused Triton post-res kernel is not available yet")
    return post_res_reference(x, y, h_post, h_res)
