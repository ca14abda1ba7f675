"""``HyperConnection``: mHC, HC and the plain residual behind one switch (mHC paper, Eq. 3).

    x_{l+1} = H_res x_l + H_post^T F(H_pre x_l)                        (Eq. 3)

* ``mode="mhc"``: coefficients of Eq. 7-9 (RMSNorm of the flattened streams, gated dynamic
  projection plus static bias; sigmoid, 2*sigmoid, Sinkhorn-Knopp). Parameters in
  DeepSeek-V4's layout (``fn``, ``base``, ``scale``; see ``torch_mhc.ops.coefficients``).
* ``mode="hc"``: unconstrained Hyper-Connections (Eq. 5; Zhu et al. 2409.19606) with that
  paper's init: ``H_pre`` one-hot on stream ``layer_index mod n``, ``H_res = I``,
  ``H_post = 1``, dynamic weights zero, gates 0.01.
* ``mode="residual"``: ``x + F(x)``. With ``n = 1`` it is bit for bit the hand-written
  residual; with ``n > 1`` the streams are treated as one (the branch reads their mean and
  its output is added to every stream).

Initialisation of mHC (the paper states only the gates, a = 0.01). Ours makes a fresh mHC
network fed ``n`` copies of one vector compute exactly what its residual twin computes,
while breaking the symmetry between streams (with identical streams and a symmetric init,
every stream would receive the same gradient and stay a copy forever):

* ``fn = 0``: no dynamic part at step 0, so the mappings are the same for every input;
* ``H_pre`` sums to 1 and leans on stream ``layer_index mod n`` (weight 2/3, the others
  share 1/3): the branch reads the residual hidden state, like HC's one-hot init but soft;
* ``H_post = 2 sigmoid(0) = 1``: the branch output is added to every stream;
* ``H_res`` doubly stochastic with 3/4 on the diagonal: identical streams stay identical.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Tuple

import torch
from torch import nn

from ..ops._backend import check_backend, resolve_backend
from ..ops.coefficients import mhc_coefficients
from ..ops.connection import connection_post, connection_pre, post_forward
from ..ops.hc_coefficients import hc_coefficients_reference
from ..ops.post_res import post_res
from ..ops.pre_mix import pre_mix
from ._init import copy_into
from .recompute import current_recompute

__all__ = ["HyperConnection", "MODES", "mhc_bias_init", "hc_bias_init"]

MODES = ("mhc", "hc", "residual")


def mhc_bias_init(n: int, layer_index: int = 0) -> torch.Tensor:
    """Static biases ``[b_pre (n), b_post (n), comb (n^2)]`` of our mHC init (module doc)."""
    if n == 1:  # H_res = 1 whatever the logit; H_pre as close to 1 as a sigmoid allows
        return torch.tensor([16.0, 0.0, 0.0])
    pre = torch.full((n,), -math.log(3 * n - 4))  # sigmoid -> 1 / (3(n-1))
    pre[layer_index % n] = math.log(2.0)  # sigmoid -> 2/3
    post = torch.zeros(n)
    comb = torch.eye(n) * math.log(3 * (n - 1))  # softmax/Sinkhorn -> 3/4 on the diagonal
    return torch.cat([pre, post, comb.flatten()])


def hc_bias_init(n: int, layer_index: int = 0) -> torch.Tensor:
    """HC's published static init: one-hot ``b_pre``, ``b_post = 1``, ``b_res = I``."""
    pre = torch.zeros(n)
    pre[layer_index % n] = 1.0
    return torch.cat([pre, torch.ones(n), torch.eye(n).flatten()])


class HyperConnection(nn.Module):
    """Wrap ``branch`` (attention, MLP, any ``(..., dim) -> (..., dim)`` module) in a
    hyper-connection over ``n`` residual streams.

    Args:
        branch: the sublayer ``F``; extra args and kwargs of ``forward`` are passed to it;
            if it returns a tuple, the first element is the output and the rest is passed
            back after the new streams.
        dim: stream width ``C``.
        n: expansion rate (number of streams), >= 1.
        mode: ``"mhc"``, ``"hc"`` or ``"residual"``.
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
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
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
        kw = {"device": device, "dtype": dtype}
        if mode == "mhc":
            self.fn = nn.Parameter(torch.empty((n + 2) * n, n * dim, **kw))
            self.base = nn.Parameter(torch.empty((n + 2) * n, **kw))
            self.scale = nn.Parameter(torch.empty(3, **kw))
        elif mode == "hc":
            self.theta = nn.Parameter(torch.empty(n + 2, dim, **kw))
            self.alpha = nn.Parameter(torch.empty(3, **kw))
            self.bias = nn.Parameter(torch.empty(2 * n + n * n, **kw))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """(Re)initialise the connection's parameters in place (module doc; HC: its paper's
        init); the branch is left alone. Call it after ``to_empty()`` on a model built on
        the ``meta`` device (FSDP2 style)."""
        with torch.no_grad():
            if self.mode == "mhc":
                self.fn.zero_()
                copy_into(self.base, mhc_bias_init(self.n, self.layer_index))
                self.scale.fill_(self.gate_init)
            elif self.mode == "hc":
                self.theta.zero_()
                self.alpha.fill_(self.gate_init)
                copy_into(self.bias, hc_bias_init(self.n, self.layer_index))

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
        if self.mode == "mhc":
            return mhc_coefficients(streams, self.fn, self.base, self.scale, self.sinkhorn_iters,
                                    self.rms_eps, self.hc_eps, backend=self.backend)
        if self.mode == "hc":
            return hc_coefficients_reference(streams, self.theta, self.alpha, self.bias)
        lead = streams.shape[:-2]
        eye = torch.eye(self.n, device=streams.device)
        return (torch.full((*lead, self.n), 1.0 / self.n, device=streams.device),
                torch.ones(*lead, self.n, device=streams.device),
                eye.expand(*lead, self.n, self.n))

    def forward(self, streams: torch.Tensor, *args, **kwargs):
        """Streams ``(..., n, dim)`` -> next streams (plus any extra outputs of the branch)."""
        self._check_streams(streams)
        if self.mode == "residual":
            h = streams.squeeze(-2) if self.n == 1 else streams.mean(dim=-2)
            out = self.branch(h, *args, **kwargs)
            y, rest = _split_output(out)
            return _pack(streams + y.unsqueeze(-2), rest)
        if self.mode == "mhc" and resolve_backend(self.backend, streams) == "triton":
            return self._forward_fused(streams, *args, **kwargs)
        h_pre, h_post, h_res = self.mappings(streams)
        if self.record_mappings:
            self.last_mappings = (h_pre.detach(), h_post.detach(), h_res.detach())
        backend = self.backend if self.mode == "mhc" else "torch"
        out = self.branch(pre_mix(streams, h_pre, backend), *args, **kwargs)
        y, rest = _split_output(out)
        new = post_res(streams, y, h_post, h_res, backend)
        _register(new, streams, functools.partial(post_res, backend=backend), y, h_post, h_res)
        return _pack(new, rest)

    def _forward_fused(self, streams: torch.Tensor, *args, **kwargs):
        """mHC through the fused Triton connection (``torch_mhc.ops.connection``): one
        coefficient + pre-mix half, the branch, one post-res half; a single ``dx`` pass."""
        h, h_pre, h_post, h_res, link = connection_pre(
            streams, self.fn, self.base, self.scale, self.sinkhorn_iters, self.rms_eps,
            self.hc_eps)
        if self.record_mappings:
            self.last_mappings = (h_pre.detach(), h_post.detach(), h_res.detach())
        y, rest = _split_output(self.branch(h, *args, **kwargs))
        new = connection_post(streams, y, h_post, h_res, link)
        _register(new, streams, post_forward, y, h_post, h_res)
        return _pack(new, rest)


def _register(new, streams, post, y, h_post, h_res) -> None:
    """Inside ``stream_recompute``: let ``new = post(streams, y, h_post, h_res)`` be dropped
    after forward and recomputed in backward (``torch_mhc.nn.recompute``)."""
    rc = current_recompute()
    if rc is not None:
        rc.connection_output(new, streams, post, y, h_post, h_res)


def _split_output(out):
    if isinstance(out, tuple):
        if not out:
            raise ValueError("the branch returned an empty tuple")
        return out[0], out[1:]
    return out, ()


def _pack(streams: torch.Tensor, rest: tuple):
    return (streams, *rest) if rest else streams
