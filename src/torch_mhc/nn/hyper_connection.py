"""``HyperConnection``: mHC, HC, the plain residual, or any registered mode, behind one
switch (mHC paper, Eq. 3):

    x_{l+1} = H_res x_l + H_post^T F(H_pre x_l)                        (Eq. 3)

What each ``mode`` is (its parameters, their init, its mappings) lives in
:mod:`torch_mhc.nn.modes`, one :class:`~torch_mhc.nn.modes.ConnectionMode` each; this
module is the layer around them (checks, the DeepSeek-V4 form, dispatch).
"""
from __future__ import annotations

import math
from typing import List, Optional, Set, Tuple

import torch
from torch import nn

from ..ops._backend import check_backend
from .modes import MODES, connection_mode, hc_bias_init, mhc_bias_init

__all__ = ["HyperConnection", "MODES", "mhc_bias_init", "hc_bias_init",
           "connection_parameters", "no_weight_decay_parameters"]


class HyperConnection(nn.Module):
    """Wrap ``branch`` (attention, MLP, any ``(..., dim) -> (..., dim)`` module) in a
    hyper-connection over ``n`` residual streams.

    Args:
        branch: the sublayer ``F``; extra args and kwargs of ``forward`` are passed to it;
            if it returns a tuple, the first element is the output and the rest is passed
            back after the new streams.
        dim: stream width ``C``.
        n: expansion rate (number of streams), >= 1.
        mode: ``"mhc"``, ``"hc"``, ``"residual"`` or another name in
            :data:`torch_mhc.nn.modes.MODES` (``register_mode`` adds one).
        layer_index: position of this connection in the network (HC's one-hot init and
            our mHC init lean on stream ``layer_index mod n``).
        backend: ``"auto"`` (fused Triton on CUDA when available, else PyTorch),
            ``"torch"`` or ``"triton"``.
        sinkhorn_iters: Sinkhorn-Knopp iterations ``t_max`` (paper: 20).
        rms_eps: RMSNorm epsilon (paper: 1e-20; DeepSeek-V4: 1e-6).
        hc_eps: DeepSeek-V4's ``+eps`` terms in ``H_pre`` and Sinkhorn (paper: 0).
        gate_init: initial value of the gates ``a_pre, a_post, a_res`` (paper: 0.01).
        device, dtype: where and in which dtype to create the parameters (as ``nn.Linear``);
            ``device="meta"`` allocates nothing (then ``to_empty`` + ``reset_parameters``).

    Call ``hc(streams, *args, **kwargs)`` with ``streams`` of shape ``(..., n, dim)``.
    """

    def __init__(self, branch: nn.Module, dim: int, n: int = 4, mode: str = "mhc",
                 layer_index: int = 0, backend: str = "auto", *, sinkhorn_iters: int = 20,
                 rms_eps: float = 1e-20, hc_eps: float = 0.0, gate_init: float = 0.01,
                 device=None, dtype=None):
        super().__init__()
        spec = connection_mode(mode)
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if int(sinkhorn_iters) < 1:
            raise ValueError(f"sinkhorn_iters must be >= 1, got {sinkhorn_iters}")
        self.branch = branch
        self.dim, self.n, self.mode = dim, n, mode
        self.layer_index = layer_index
        self.backend = check_backend(backend)
        self.sinkhorn_iters, self.rms_eps, self.hc_eps = int(sinkhorn_iters), rms_eps, hc_eps
        self.record_mappings = False  # diagnostics: keep the last mappings (detached)
        self.last_mappings: Optional[Tuple[torch.Tensor, ...]] = None
        self.gate_init = float(gate_init)
        for name, shape in spec.parameters(n, dim).items():
            self.register_parameter(name, nn.Parameter(torch.empty(shape, device=device,
                                                                   dtype=dtype)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """(Re)initialise the connection's parameters in place (its mode's init: see
        :mod:`torch_mhc.nn.modes`); the branch is left alone. Call it after ``to_empty()``
        on a model built on the ``meta`` device (FSDP2 style)."""
        with torch.no_grad():
            MODES[self.mode].reset(self)

    def no_weight_decay(self) -> Set[str]:
        """Names of this connection's parameters that weight decay should skip (its mode's
        ``no_weight_decay``)."""
        return set(MODES[self.mode].no_weight_decay)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, n={self.n}, mode={self.mode!r}, layer_index={self.layer_index}"

    # -- DeepSeek-V4 convention (released checkpoints) ------------------------------------
    @classmethod
    def from_deepseek_v4(cls, branch: nn.Module, fn: torch.Tensor, base: torch.Tensor,
                         scale: torch.Tensor, eps: float = 1e-6, iters: int = 20,
                         backend: str = "auto", rms_eps: Optional[float] = None
                         ) -> "HyperConnection":
        """Build an mHC connection from a DeepSeek-V4 site's ``fn [(n+2)n, nC]``,
        ``base [(n+2)n]`` and ``scale [3]``; computes what V4 computes (eps terms included).

        ``eps`` is V4's ``hc_eps``; ``rms_eps`` its norm epsilon (default: ``eps``)."""
        if fn.dim() != 2 or base.dim() != 1 or scale.shape != (3,):
            raise ValueError("expected fn [(n+2)n, nC], base [(n+2)n], scale [3]; got "
                             f"{tuple(fn.shape)}, {tuple(base.shape)}, {tuple(scale.shape)}")
        n = int(round(math.sqrt(base.numel() + 1))) - 1  # (n+2)n = (n+1)^2 - 1
        if (n + 2) * n != base.numel() or fn.shape[0] != base.numel() or fn.shape[1] % n:
            raise ValueError(f"inconsistent V4 shapes fn {tuple(fn.shape)}, base {tuple(base.shape)}")
        hc = cls(branch, fn.shape[1] // n, n, "mhc", backend=backend, sinkhorn_iters=iters,
                 rms_eps=eps if rms_eps is None else rms_eps, hc_eps=eps)
        with torch.no_grad():
            hc.fn.copy_(fn)
            hc.base.copy_(base)
            hc.scale.copy_(scale)
        return hc

    def to_deepseek_v4(self) -> dict:
        """The parameters under V4's names and shapes: ``{"fn", "base", "scale"}``."""
        if self.mode != "mhc":
            raise ValueError("only mode='mhc' has a DeepSeek-V4 form")
        return {"fn": self.fn.detach(), "base": self.base.detach(), "scale": self.scale.detach()}

    # -- the layer -------------------------------------------------------------------------
    def _check_streams(self, streams: torch.Tensor) -> None:
        if not isinstance(streams, torch.Tensor):
            raise TypeError(f"HyperConnection expects a tensor of streams, got {type(streams).__name__}")
        if streams.dim() < 2 or streams.shape[-2] != self.n or streams.shape[-1] != self.dim:
            raise ValueError(
                f"HyperConnection(dim={self.dim}, n={self.n}) expects streams of shape "
                f"(..., {self.n}, {self.dim}), got {tuple(streams.shape)}; widen a hidden "
                f"state (..., {self.dim}) with torch_mhc.expand_streams(x, {self.n})")

    def mappings(self, streams: torch.Tensor):
        """``(H_pre (..., n), H_post (..., n), H_res (..., n, n))`` for these streams, float32."""
        self._check_streams(streams)
        return MODES[self.mode].mappings(self, streams)

    def forward(self, streams: torch.Tensor, *args, **kwargs):
        """Streams ``(..., n, dim)`` -> next streams (plus any extra outputs of the branch)."""
        self._check_streams(streams)
        return MODES[self.mode].forward(self, streams, *args, **kwargs)


def connection_parameters(model: nn.Module) -> List[nn.Parameter]:
    """The parameters of every :class:`HyperConnection` in ``model`` that are the
    connection's own (its mode's, not its branch's), in module order: the connection
    initialises them itself, so a model's init leaves them alone."""
    return [p for m in model.modules() if isinstance(m, HyperConnection)
            for p in m.parameters(recurse=False)]


def no_weight_decay_parameters(model: nn.Module) -> List[nn.Parameter]:
    """The parameters of the :class:`HyperConnection` modules in ``model`` that their
    modes exclude from weight decay (:attr:`ConnectionMode.no_weight_decay`)."""
    return [getattr(m, name) for m in model.modules() if isinstance(m, HyperConnection)
            for name in sorted(m.no_weight_decay())]
