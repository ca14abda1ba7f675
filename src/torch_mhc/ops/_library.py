"""The fused ops as ``torch.library`` custom ops, with a direct path for eager mode.

Every fused op is registered once under the ``torch_mhc`` namespace
(``torch.library.custom_op`` + ``register_fake``, and ``register_autograd`` for the forward
ops), so ``torch.compile(..., fullgraph=True)`` traces an mHC model without graph breaks,
``torch.export`` records the ops, Inductor schedules and fuses the code around them and
CUDA graphs capture them. ``torch.ops.torch_mhc.*`` lists them.

In eager mode the dispatcher costs host time: a custom op with registered autograd took
62 us per call against 22 us for the same math in a plain ``torch.autograd.Function``
(torch 2.13, CPU, tiny tensors), and a connection runs four of them per training step. So
:class:`FusedOp` calls the implementation through an ``autograd.Function`` built from the
*same* ``setup_context`` and ``backward`` functions whenever nothing traces (plain tensors, no
dispatch mode, not compiling), and through the registered op otherwise. Both paths run the
same Python functions; the tests check each op with ``torch.library.opcheck`` and compare
compiled with eager results.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

__all__ = ["FusedOp", "tracing"]

NAMESPACE = "torch_mhc"


def tracing(t: torch.Tensor) -> bool:
    """True while ``t`` is being traced (``torch.compile``, ``torch.export``, ``make_fx``,
    a ``TorchDispatchMode`` such as the FLOP counter, a tensor subclass): then the registered
    ops must be called. False in plain eager mode, where the implementations run directly."""
    return (type(t) is not torch.Tensor or torch.compiler.is_compiling()
            or torch._C._len_torch_dispatch_stack() > 0)


class FusedOp:
    """One fused op: ``torch.ops.torch_mhc.<name>`` and its eager twin over the same code.

    Args:
        name: op name in the ``torch_mhc`` namespace.
        impl: the implementation; it must return new tensors, never views of its inputs.
        fake: shapes, dtypes and strides of the outputs for meta / fake tensors.
        setup_context, backward: as for ``torch.library.register_autograd``; give both for a
            differentiable op. ``backward`` must call other :class:`FusedOp` objects (not raw
            kernels) so that it can be traced.
        schema: the op's schema, e.g. ``"(Tensor x, int iters) -> (Tensor, Tensor)"``
            (written out rather than inferred from annotations, which older PyTorch
            releases cannot read under ``from __future__ import annotations``).
    """

    def __init__(self, name: str, impl: Callable, fake: Callable,
                 setup_context: Optional[Callable] = None, backward: Optional[Callable] = None,
                 *, schema: str):
        self.name, self.impl = name, impl
        self.op = torch.library.custom_op(f"{NAMESPACE}::{name}", impl, mutates_args=(),
                                          schema=schema)
        self.op.register_fake(fake)
        self._eager = None
        if backward is not None:
            self.op.register_autograd(backward, setup_context=setup_context)
            self._eager = _eager_function(name, impl, setup_context, backward)

    def __call__(self, *args):
        if tracing(args[0]):
            return self.op(*args)
        if self._eager is not None and torch.is_grad_enabled() and any(
                isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            return self._eager.apply(*args)
        return self.impl(*args)


def _eager_function(name: str, impl: Callable, setup_context: Callable,
                    backward: Callable) -> type:
    """An ``autograd.Function`` running ``impl`` with the op's own autograd formula."""

    def forward(ctx, *args):
        out = impl(*args)
        setup_context(ctx, args, out)
        return out

    return type(f"Eager_{name}", (torch.autograd.Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(backward)})
