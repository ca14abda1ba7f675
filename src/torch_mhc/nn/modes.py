"""Connection modes: everything one ``mode`` of :class:`~torch_mhc.HyperConnection` is, in
one place (mHC paper, Eq. 3):

    x_{l+1} = H_res x_l + H_post^T F(H_pre x_l)                        (Eq. 3)

A mode is a :class:`ConnectionMode` in :data:`MODES`: its parameters (names and shapes),
their initialisation, its mappings ``(H_pre, H_post, H_res)``, the names of its parameters
that AdamW must not decay, and the number of streams a model built on it carries.
``HyperConnection``, ``GPT``, ``DeepStack``, the trainer (``--connection``, ``mhc compare
--modes``) and ``upcycle`` look modes up here, so :func:`register_mode` adds one to all of
them.

Built in:

* ``"mhc"``: coefficients of Eq. 7-9 (RMSNorm of the flattened streams, gated dynamic
  projection plus static bias; sigmoid, 2*sigmoid, Sinkhorn-Knopp). Parameters in
  DeepSeek-V4's layout (``fn``, ``base``, ``scale``; see ``torch_mhc.ops.coefficients``).
  On the Triton backend it runs the fused connection (``torch_mhc.ops.connection``).
* ``"hc"``: unconstrained Hyper-Connections (Eq. 5; Zhu et al. 2409.19606) with that
  paper's init: ``H_pre`` one-hot on stream ``layer_index mod n``, ``H_res = I``,
  ``H_post = 1``, dynamic weights zero, gates 0.01.
* ``"residual"``: ``x + F(x)``. With ``n = 1`` it is bit for bit the hand-written
  residual; with ``n > 1`` the streams are treated as one (the branch reads their mean and
  its output is added to every stream). Models built on it carry one stream.

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
from dataclasses import dataclass
from typing import Any, Callable, Dict, Tuple

import torch

from ..ops._backend import resolve_backend
from ..ops.coefficients import mhc_coefficients
from ..ops.connection import connection_post, connection_pre, post_forward
from ..ops.hc_coefficients import hc_coefficients_reference
from ..ops.post_res import post_res
from ..ops.pre_mix import pre_mix
from ._init import copy_into
from .recompute import current_recompute

__all__ = ["ConnectionMode", "MODES", "register_mode", "connection_mode", "mapped_forward",
           "split_output", "pack_output", "register_recompute", "mhc_bias_init", "hc_bias_init"]

Shapes = Dict[str, Tuple[int, ...]]
Mappings = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def mapped_forward(hc, streams: torch.Tensor, *args, **kwargs):
    """The forward of a mode from its mappings: ``H_pre`` mixes the streams into the branch
    input, ``H_post`` and ``H_res`` write the branch output back (Eq. 3); the default
    :attr:`ConnectionMode.forward`."""
    h_pre, h_post, h_res = hc.mappings(streams)
    if hc.record_mappings:
        hc.last_mappings = (h_pre.detach(), h_post.detach(), h_res.detach())
    backend = hc.backend if MODES[hc.mode].fused_mix else "torch"
    y, rest = split_output(hc.branch(pre_mix(streams, h_pre, backend), *args, **kwargs))
    new = post_res(streams, y, h_post, h_res, backend)
    register_recompute(new, streams, functools.partial(post_res, backend=backend), y, h_post,
                       h_res)
    return pack_output(new, rest)


def _all_streams(n: int) -> int:
    """All ``n`` streams (the default of :attr:`ConnectionMode.streams`)."""
    return n


def _no_parameters(n: int, dim: int) -> Shapes:
    """No parameters of its own (the default of :attr:`ConnectionMode.parameters`)."""
    return {}


def _nothing_to_reset(hc) -> None:
    """Nothing to initialise (the default of :attr:`ConnectionMode.reset`)."""


@dataclass(frozen=True)
class ConnectionMode:
    """One connection mode of :class:`~torch_mhc.HyperConnection`.

    Args:
        name: the ``mode=`` string (also ``GPTConfig.connection``, ``--connection``).
        mappings: ``mappings(hc, streams) -> (H_pre (..., n), H_post (..., n),
            H_res (..., n, n))``, float32, for streams ``(..., n, dim)``.
        parameters: ``parameters(n, dim) -> {name: shape}``: the connection's own
            parameters, registered in this order (so ``state_dict`` keys are
            ``<connection>.<name>``); created empty, then ``reset``.
        reset: ``reset(hc)`` fills them in place (under ``no_grad``; ``hc.n``,
            ``hc.layer_index``, ``hc.gate_init`` are there to read).
        no_weight_decay: names of its parameters that AdamW must not decay (``mhc train``
            decays matrices, ``dim >= 2``, except these).
        streams: ``streams(n) -> int``: the streams a model carries for expansion rate ``n``.
        forward: ``forward(hc, streams, *args, **kwargs)``: the layer, after the shape
            check; default :func:`mapped_forward`.
        fused_mix: :func:`mapped_forward` runs pre-mix and post-res on the connection's
            backend (Triton where it resolves so) instead of PyTorch.
    """

    name: str
    mappings: Callable[[Any, torch.Tensor], Mappings]
    parameters: Callable[[int, int], Shapes] = _no_parameters
    reset: Callable[[Any], None] = _nothing_to_reset
    no_weight_decay: Tuple[str, ...] = ()
    streams: Callable[[int], int] = _all_streams
    forward: Callable[..., Any] = mapped_forward
    fused_mix: bool = False


MODES: Dict[str, ConnectionMode] = {}


def register_mode(mode: ConnectionMode, replace: bool = False) -> ConnectionMode:
    """Add ``mode`` to :data:`MODES` (``replace=True`` to redefine a name); returns it."""
    if not isinstance(mode, ConnectionMode):
        raise TypeError(f"register_mode expects a ConnectionMode, got {type(mode).__name__}")
    if not isinstance(mode.name, str) or not mode.name:
        raise ValueError(f"a mode needs a non-empty name, got {mode.name!r}")
    if mode.name in MODES and not replace:
        raise ValueError(f"mode {mode.name!r} is already registered (replace=True redefines it)")
    bad = sorted(set(mode.no_weight_decay) - set(mode.parameters(1, 1)))
    if bad:
        raise ValueError(f"mode {mode.name!r}: no_weight_decay names {bad} are not among its "
                         f"parameters {list(mode.parameters(1, 1))}")
    MODES[mode.name] = mode
    return mode


def connection_mode(name: str) -> ConnectionMode:
    """The registered mode ``name``; a ``ValueError`` that lists the registered ones if none."""
    mode = MODES.get(name) if isinstance(name, str) else None
    if mode is None:
        raise ValueError(f"unknown mode {name!r}; registered modes: {', '.join(MODES)} "
                         "(torch_mhc.nn.register_mode adds one)")
    return mode


# -- the branch's outputs ----------------------------------------------------------------
def split_output(out) -> Tuple[torch.Tensor, tuple]:
    """A branch's output -> ``(output, extra outputs)``: a tuple's first element and the rest."""
    if isinstance(out, tuple):
        if not out:
            raise ValueError("the branch returned an empty tuple")
        return out[0], out[1:]
    return out, ()


def pack_output(streams: torch.Tensor, rest: tuple):
    """The new streams, followed by the branch's extra outputs when it had any."""
    return (streams, *rest) if rest else streams


def register_recompute(new, streams, post, y, h_post, h_res) -> None:
    """Inside ``stream_recompute``: let ``new = post(streams, y, h_post, h_res)`` be dropped
    after forward and recomputed in backward (``torch_mhc.nn.recompute``)."""
    rc = current_recompute()
    if rc is not None:
        rc.connection_output(new, streams, post, y, h_post, h_res)


# -- mhc -----------------------------------------------------------------------------------
def mhc_bias_init(n: int, layer_index: int = 0) -> torch.Tensor:
    """Static biases ``[b_pre (n), b_post (n), comb (n^2)]`` of our mHC init (module doc)."""
    if n == 1:  # H_res = 1 whatever the logit; H_pre as close to 1 as a sigmoid allows
        return torch.tensor([16.0, 0.0, 0.0])
    pre = torch.full((n,), -math.log(3 * n - 4))  # sigmoid -> 1 / (3(n-1))
    pre[layer_index % n] = math.log(2.0)  # sigmoid -> 2/3
    post = torch.zeros(n)
    comb = torch.eye(n) * math.log(3 * (n - 1))  # softmax/Sinkhorn -> 3/4 on the diagonal
    return torch.cat([pre, post, comb.flatten()])


def _mhc_parameters(n: int, dim: int) -> Shapes:
    return {"fn": ((n + 2) * n, n * dim), "base": ((n + 2) * n,), "scale": (3,)}


def _mhc_reset(hc) -> None:
    hc.fn.zero_()
    copy_into(hc.base, mhc_bias_init(hc.n, hc.layer_index))
    hc.scale.fill_(hc.gate_init)


def _mhc_mappings(hc, streams: torch.Tensor) -> Mappings:
    return mhc_coefficients(streams, hc.fn, hc.base, hc.scale, hc.sinkhorn_iters, hc.rms_eps,
                            hc.hc_eps, backend=hc.backend)


def _mhc_forward(hc, streams: torch.Tensor, *args, **kwargs):
    """On the Triton backend, the fused connection (``torch_mhc.ops.connection``): one
    coefficient + pre-mix half, the branch, one post-res half; a single ``dx`` pass.
    Otherwise :func:`mapped_forward`."""
    if resolve_backend(hc.backend, streams) != "triton":
        return mapped_forward(hc, streams, *args, **kwargs)
    h, h_pre, h_post, h_res, link = connection_pre(
        streams, hc.fn, hc.base, hc.scale, hc.sinkhorn_iters, hc.rms_eps, hc.hc_eps)
    if hc.record_mappings:
        hc.last_mappings = (h_pre.detach(), h_post.detach(), h_res.detach())
    y, rest = split_output(hc.branch(h, *args, **kwargs))
    new = connection_post(streams, y, h_post, h_res, link)
    register_recompute(new, streams, post_forward, y, h_post, h_res)
    return pack_output(new, rest)


# -- hc ------------------------------------------------------------------------------------
def hc_bias_init(n: int, layer_index: int = 0) -> torch.Tensor:
    """HC's published static init: one-hot ``b_pre``, ``b_post = 1``, ``b_res = I``."""
    pre = torch.zeros(n)
    pre[layer_index % n] = 1.0
    return torch.cat([pre, torch.ones(n), torch.eye(n).flatten()])


def _hc_parameters(n: int, dim: int) -> Shapes:
    return {"theta": (n + 2, dim), "alpha": (3,), "bias": (2 * n + n * n,)}


def _hc_reset(hc) -> None:
    hc.theta.zero_()
    hc.alpha.fill_(hc.gate_init)
    copy_into(hc.bias, hc_bias_init(hc.n, hc.layer_index))


def _hc_mappings(hc, streams: torch.Tensor) -> Mappings:
    return hc_coefficients_reference(streams, hc.theta, hc.alpha, hc.bias)


# -- residual ------------------------------------------------------------------------------
def _residual_mappings(hc, streams: torch.Tensor) -> Mappings:
    lead, n = streams.shape[:-2], hc.n
    eye = torch.eye(n, device=streams.device)
    return (torch.full((*lead, n), 1.0 / n, device=streams.device),
            torch.ones(*lead, n, device=streams.device),
            eye.expand(*lead, n, n))


def _residual_forward(hc, streams: torch.Tensor, *args, **kwargs):
    h = streams.squeeze(-2) if hc.n == 1 else streams.mean(dim=-2)
    y, rest = split_output(hc.branch(h, *args, **kwargs))
    return pack_output(streams + y.unsqueeze(-2), rest)


def _one_stream(n: int) -> int:
    return 1


register_mode(ConnectionMode("mhc", _mhc_mappings, _mhc_parameters, _mhc_reset,
                             no_weight_decay=("base", "scale"), forward=_mhc_forward,
                             fused_mix=True))
register_mode(ConnectionMode("hc", _hc_mappings, _hc_parameters, _hc_reset,
                             no_weight_decay=("alpha", "bias")))
register_mode(ConnectionMode("residual", _residual_mappings, streams=_one_stream,
                             forward=_residual_forward))
