"""``HyperHead``: the learned collapse of ``n`` residual streams before the final norm.

DeepSeek-V4 ends its mHC stack with such a head (released checkpoints; transformers'
``DeepseekV4HyperHead``): ``out = sum_i w_i x_i`` with
``w = sigmoid(hc_scale * (RMSNorm(vec x) @ hc_fn^T) + hc_base) + eps``. The parameters keep
V4's names and shapes (``hc_fn [n, nC]``, ``hc_base [n]``, ``hc_scale [1]``) so a V4
checkpoint's ``hc_head.*`` tensors load into it without conversion.

Default initialisation (ours; V4 does not publish one beyond transformers' random init):
``hc_fn = 0``, ``hc_base = -log(n - 1)`` so every weight is ``sigmoid = 1/n``, ``hc_scale``
= ``gate_init``. With ``eps = 0`` that is exactly the mean of the streams
(:func:`torch_mhc.reduce_streams`), which keeps a fresh mHC network equal to its residual
twin (README, "Design decisions").
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..ops._backend import check_backend
from ..ops.hyper_head import hyper_head, hyper_head_weights_reference

__all__ = ["HyperHead"]


class HyperHead(nn.Module):
    """Collapse streams ``(..., n, dim)`` to ``(..., dim)`` with learned, input-dependent weights.

    Args:
        dim: stream width ``C``.
        n: number of streams, >= 1.
        rms_eps: epsilon of the unweighted RMSNorm of the flattened streams (V4: 1e-6).
        eps: V4's ``+eps`` added to every weight (V4: 1e-6; 0 gives an exact mean at init).
        backend: ``"auto"``, ``"torch"`` or ``"triton"`` for the weighted sum.
        gate_init: initial ``hc_scale``.
        device, dtype: where and in which dtype to create the parameters (``"meta"``: no
            allocation; then ``to_empty`` + ``reset_parameters``).
    """

    def __init__(self, dim: int, n: int = 4, *, rms_eps: float = 1e-6, eps: float = 0.0,
                 backend: str = "auto", gate_init: float = 0.01, device=None, dtype=None):
        super().__init__()
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self.dim, self.n = dim, n
        self.rms_eps, self.eps = rms_eps, eps
        self.backend = check_backend(backend)
        self.gate_init = float(gate_init)
        kw = {"device": device, "dtype": dtype}
        self.hc_fn = nn.Parameter(torch.empty(n, n * dim, **kw))
        self.hc_base = nn.Parameter(torch.empty(n, **kw))
        self.hc_scale = nn.Parameter(torch.empty(1, **kw))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """(Re)initialise to the default init (module doc), in place; for ``meta``-device
        construction followed by ``to_empty()``."""
        n = self.n
        base = -math.log(n - 1) if n > 1 else 16.0  # sigmoid -> 1/n (n = 1: as close to 1 as fp32 allows)
        with torch.no_grad():
            self.hc_fn.zero_()
            self.hc_base.fill_(base)
            self.hc_scale.fill_(self.gate_init)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, n={self.n}, rms_eps={self.rms_eps}, eps={self.eps}"

    @classmethod
    def from_deepseek_v4(cls, hc_fn: torch.Tensor, hc_base: torch.Tensor, hc_scale: torch.Tensor,
                         rms_eps: float = 1e-6, eps: float = 1e-6,
                         backend: str = "auto") -> "HyperHead":
        """Build from a V4 checkpoint's ``hc_head.hc_fn [n, nC]``, ``hc_base [n]``,
        ``hc_scale [1]`` (values copied; see ``torch_mhc.integrations.transformers`` for
        sharing the very same parameters with a transformers model)."""
        if hc_fn.dim() != 2 or hc_base.dim() != 1 or hc_scale.numel() != 1:
            raise ValueError("expected hc_fn [n, nC], hc_base [n], hc_scale [1]; got "
                             f"{tuple(hc_fn.shape)}, {tuple(hc_base.shape)}, {tuple(hc_scale.shape)}")
        n = hc_base.numel()
        if hc_fn.shape[0] != n or hc_fn.shape[1] % n:
            raise ValueError(f"inconsistent V4 head shapes hc_fn {tuple(hc_fn.shape)}, "
                             f"hc_base {tuple(hc_base.shape)}")
        head = cls(hc_fn.shape[1] // n, n, rms_eps=rms_eps, eps=eps, backend=backend)
        with torch.no_grad():
            head.hc_fn.copy_(hc_fn)
            head.hc_base.copy_(hc_base)
            head.hc_scale.copy_(hc_scale.reshape(1))
        return head

    def to_deepseek_v4(self) -> dict:
        """The parameters under V4's names and shapes: ``{"hc_fn", "hc_base", "hc_scale"}``."""
        return {"hc_fn": self.hc_fn.detach(), "hc_base": self.hc_base.detach(),
                "hc_scale": self.hc_scale.detach()}

    def _check_streams(self, streams: torch.Tensor) -> None:
        if not isinstance(streams, torch.Tensor):
            raise TypeError(f"HyperHead expects a tensor of streams, got {type(streams).__name__}")
        if streams.dim() < 2 or streams.shape[-2] != self.n or streams.shape[-1] != self.dim:
            raise ValueError(f"HyperHead(dim={self.dim}, n={self.n}) expects streams of shape "
                             f"(..., {self.n}, {self.dim}), got {tuple(streams.shape)}")

    def weights(self, streams: torch.Tensor) -> torch.Tensor:
        """The collapse weights ``(..., n)`` (float32) for these streams."""
        self._check_streams(streams)
        return hyper_head_weights_reference(streams, self.hc_fn, self.hc_base, self.hc_scale,
                                            self.rms_eps, self.eps)

    def forward(self, streams: torch.Tensor) -> torch.Tensor:
        """Streams ``(..., n, dim)`` -> ``(..., dim)`` in the streams' dtype."""
        self._check_streams(streams)
        return hyper_head(streams, self.hc_fn, self.hc_base, self.hc_scale, self.rms_eps,
                          self.eps, self.backend)
