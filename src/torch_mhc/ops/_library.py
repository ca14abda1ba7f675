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

import copy
import functools
import threading
from typing import Callable, Optional

import torch

from ._backend import env_flag

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
        _inline_under_compile(self.op, impl)

    def __call__(self, *args):
        if tracing(args[0]):
            return self.op(*args)
        if self._eager is not None and torch.is_grad_enabled() and any(
                isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            return self._eager.apply(*args)
        return self.impl(*args)


def inline_kernels(*args) -> bool:
    """True when a compiled graph should see this op's kernels themselves: CUDA tensors,
    compiled (not interpreted) Triton, not ``torch.export`` (which keeps the op) and not
    switched off by ``TORCH_MHC_INLINE_KERNELS=0``."""
    from ._backend import interpret_mode, triton_available
    t = next(a for a in args if isinstance(a, torch.Tensor))
    return (INLINE_KERNELS and t.is_cuda and not interpret_mode() and triton_available()
            and getattr(torch._functorch.config, "decompose_custom_triton_ops", True))


_INLINING = threading.local()


def inlining() -> bool:
    """True while an op's implementation is being traced into a compiled graph: its Triton
    launches must then be ``wrap_triton`` calls (``_launch.LazyJit``)."""
    return getattr(_INLINING, "on", False)


#: Let Inductor launch the fused kernels itself (``TORCH_MHC_INLINE_KERNELS=0``: keep the
#: ops opaque, each call then runs the Python launchers). PyTorch's compile caches key on the
#: traced program, not on this switch: after flipping it, compile with
#: ``TORCHINDUCTOR_FORCE_DISABLE_CACHES=1`` (or a fresh ``TORCHINDUCTOR_CACHE_DIR``), else a
#: warm cache returns the other build.
INLINE_KERNELS = env_flag("TORCH_MHC_INLINE_KERNELS", True)


def _inline_under_compile(op, impl: Callable) -> None:
    """Under AOTAutograd (``FunctionalTensorMode``) on CUDA, trace ``impl`` itself instead of
    keeping the op opaque, as ``torch.library.triton_op`` does: its allocations become graph
    buffers and its Triton launches ``wrap_triton`` calls (``_launch.LazyJit``), so the
    compiled code launches the kernels directly, with no Python launcher per call (the host
    time that made compiled small models launch-bound) and CUDA graphs capture them."""
    if not hasattr(op, "register_torch_dispatch"):  # PyTorch < 2.5: the op stays opaque
        return
    from torch._subclasses.fake_tensor import FakeTensor
    from torch._subclasses.functional_tensor import FunctionalTensor, FunctionalTensorMode

    def decompose(mode, func, types, args, kwargs):
        _cache_kernel_analysis()
        if not inline_kernels(*args) or any(
                t not in (torch.Tensor, FunctionalTensor) and not issubclass(t, FakeTensor)
                for t in types):
            return mode.__torch_dispatch__(func, types, args, kwargs)
        _INLINING.on = True
        try:
            with mode:
                return impl(*args, **kwargs)
        finally:
            _INLINING.on = False

    op.register_torch_dispatch(FunctionalTensorMode, decompose)


#: Memoise PyTorch's read/write analysis of the fused kernels' launches
#: (``TORCH_MHC_CACHE_KERNEL_ANALYSIS=0``: analyse every launch site, as PyTorch does).
CACHE_KERNEL_ANALYSIS = env_flag("TORCH_MHC_CACHE_KERNEL_ANALYSIS", True)
_ANALYSES: dict = {}


#: PyTorch's analysis of a user-defined kernel launch: ``identify_accessed_tensors`` in
#: recent releases, ``identify_mutated_tensors`` (the written arguments' names) before
_ANALYSIS_NAMES = ("identify_accessed_tensors", "identify_mutated_tensors")


def _cache_kernel_analysis() -> None:
    """Analyse each fused kernel's launch once per argument description, not once per launch
    site.

    For every ``wrap_triton`` launch PyTorch works out which arguments the kernel writes
    (``triton_kernel_wrap.identify_accessed_tensors``, ``identify_mutated_tensors`` in older
    releases; used by functionalization and by Inductor's lowering). It does so by building
    the kernel's TTIR each time, 30-60 ms per kernel (CPU, Triton 3.8), and a model launches
    each fused kernel once per connection. The result names the kernel's formal arguments,
    not buffers. So it is a function of the kernel, its constant arguments, which arguments
    are tensors (and their dtypes) and the values of the others. It is cached on exactly
    that, for ``torch_mhc`` kernels only, and each call gets its own copy. Installed on the
    first traced fused op; a PyTorch with neither function is left as it is.
    """
    if not CACHE_KERNEL_ANALYSIS:
        return
    try:
        from torch._higher_order_ops import triton_kernel_wrap as tkw
    except ImportError:  # pragma: no cover - PyTorch without user-defined Triton kernels
        return
    for name in _ANALYSIS_NAMES:
        analyse = getattr(tkw, name, None)
        if analyse is not None and not getattr(analyse, "_torch_mhc_cached", False):
            setattr(tkw, name, _cached_analysis(analyse))


def _cached_analysis(analyse: Callable) -> Callable:
    """``analyse`` memoised for ``torch_mhc`` kernels (see :func:`_cache_kernel_analysis`)."""

    @functools.wraps(analyse)
    def cached(kernel, kwargs, *rest, **more):
        module = getattr(getattr(kernel, "fn", None), "__module__", "") or ""
        if not module.startswith("torch_mhc."):
            return analyse(kernel, kwargs, *rest, **more)
        try:
            key = (analyse, kernel, tuple(sorted((k, _describe(v)) for k, v in kwargs.items())),
                   repr(rest), repr(sorted(more.items())))
            hash(key)
        except TypeError:  # something unhashable: no caching
            return analyse(kernel, kwargs, *rest, **more)
        hit = _ANALYSES.get(key)
        if hit is None:
            hit = _ANALYSES[key] = analyse(kernel, kwargs, *rest, **more)
        return copy.deepcopy(hit)

    cached._torch_mhc_cached = True
    return cached


def _describe(v):
    """What a launch argument contributes to a kernel's TTIR: a tensor's dtype (a fake,
    functional or Inductor tensor alike), otherwise the value itself."""
    if isinstance(v, torch.Tensor):
        return ("tensor", str(v.dtype))
    get_dtype = getattr(v, "get_dtype", None)
    if get_dtype is not None:  # an Inductor IR node (TensorBox, ...)
        return ("tensor", str(get_dtype()))
    if v is None or isinstance(v, (bool, int, float, str)):
        return (type(v).__name__, v)
    return (type(v).__name__, str(v))  # a symbolic size, ...


def _eager_function(name: str, impl: Callable, setup_context: Callable,
                    backward: Callable) -> type:
    """An ``autograd.Function`` running ``impl`` with the op's own autograd formula."""

    def forward(ctx, *args):
        out = impl(*args)
        setup_context(ctx, args, out)
        return out

    return type(f"Eager_{name}", (torch.autograd.Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(backward)})
