"""The private Triton launcher the fused ops share: kernels compiled lazily per mode
(GPU or ``TRITON_INTERPRET=1``), launched through a cached compiled kernel, and the small
helpers the launchers use for grids and products."""
from __future__ import annotations

import contextlib
import functools
import os
import warnings
from typing import Optional

import torch

from ._backend import env_flag, interpret_mode
from ._library import inlining


# -- launch order -------------------------------------------------------------------------------
#
# Consecutive kernels of a connection read what the previous one just read or
# wrote: at T = C = 4096, n = 4 the stream is 128 MiB against an H100's 50 MB L2, so the
# last ~third of it is still there when the next kernel starts. Each kernel walks the tokens
# (all channels of a token tile launched together) in the direction that starts where its
# predecessor ended:
#   forward:  post-res ascending -> (next connection) coefficient GEMM descending ->
#             pre-mix ascending
#   backward: pre-mix descending -> dx pass ascending (its programs interleaved over the
#             token tiles) -> (previous connection) post-res descending

def next_pow2(v: int) -> int:
    """Smallest power of two >= ``v`` (>= 1)."""
    return 1 << max(0, int(v) - 1).bit_length()


def triton_cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for launch grids (symbolic sizes stay symbolic: no ``int()``, which
    would specialise a dynamic shape under ``torch.compile``)."""
    return -(-a // b)


class LazyJit:
    """A Triton kernel compiled on first launch, separately for GPU and interpreter mode.

    ``triton.jit`` decides at decoration time whether a function runs on the GPU or in the
    CPU interpreter (it reads ``TRITON_INTERPRET`` then). Decorating lazily, per mode, lets
    tests switch the interpreter on after ``torch_mhc`` was imported, and keeps importing
    ``torch_mhc`` free of Triton. Device functions the kernel calls are plain functions
    passed as ``helpers``: each is decorated per mode the same way and bound under its own
    name in the kernel's module globals whenever the kernel is fetched for a mode (the
    interpreter looks them up there at call time, the compiler when it first compiles).
    """

    def __init__(self, fn, helpers=()):
        self.fn = fn
        self.helpers = tuple(helpers)
        self._compiled = {}
        self._launches = {}  # (grid, constexprs) -> Launch
        functools.update_wrapper(self, fn)

    def jit(self, interpret: Optional[bool] = None):
        """The ``triton.jit`` object for the requested (default: current) mode."""
        mode = interpret_mode() if interpret is None else interpret
        for helper in self.helpers:
            self.fn.__globals__[helper.__name__] = _decorate(helper, mode)
        kernel = self._compiled.get(mode)
        if kernel is None:
            kernel = self._compiled[mode] = _decorate(self.fn, mode)
        return kernel

    def __getitem__(self, grid):
        if not interpret_mode():
            if inlining():  # traced into a compiled graph (``_library``): a graph node
                return torch.library.wrap_triton(self.jit())[grid]
            if not FAST_LAUNCH:
                return self.jit()[grid]
            return functools.partial(self._launch_bound, grid)
        launch = self.jit()[grid]

        def run(*args, **kwargs):
            with _interpretable_language():
                return launch(*args, **kwargs)
        return run

    def _launch_bound(self, grid, *args, **kwargs):
        """``self[grid](*args, **kwargs)`` through the :class:`Launch` of this grid and
        these compile-time arguments (made once, then cached)."""
        key = (grid, *kwargs.items())
        launch = self._launches.get(key)
        if launch is None:
            if len(self._launches) >= _FAST_CACHE_SIZE:
                self._launches.clear()
            launch = self._launches[key] = Launch(self, grid, False, **kwargs)
        return launch(*args)

    def _param_names(self):
        import inspect
        return list(inspect.signature(self.fn).parameters)


class Launch:
    """``kernel[grid](*args, **constexprs)`` with the grid and the compile-time arguments
    fixed: what a launcher's cached plan (``tuning.launch_plan``) holds for one launch
    shape, so that a launch passes only its run-time arguments.

    On a GPU the launch goes through a cached ``CompiledKernel``, skipping
    ``JITFunction.run``'s per-call binding and cache lookup (host overhead that dominates
    small models). The cache key holds everything Triton specialises a compiled kernel on
    besides what this object fixes: the current device, each tensor's dtype, device and
    16-byte alignment, and the value of every other argument (a launch site passes tensors
    at the same positions every time; they are found on the first launch). The first launch
    of a key goes through Triton's own path (which compiles and checks every pointer) and
    records the kernel it returns; later ones hand Triton's launcher the tensors' addresses
    (:func:`_run_compiled`): it accepts an integer for a pointer and then skips its own
    ``data_ptr()`` call and the driver's pointer check (``cuPointerGetAttribute``); the
    device in the key sends a tensor on another device (or the CPU) through Triton's own
    launch, which checks it. Inside a compiled graph, in the interpreter or with
    ``TORCH_MHC_FAST_LAUNCH=0`` it is ``kernel[grid]``.
    """

    __slots__ = ("kernel", "grid", "kw", "interpret", "_grid3", "_tail", "_tensors", "_others",
                 "_compiled")

    def __init__(self, kernel: LazyJit, grid, interpret: bool, **kw):
        self.kernel, self.grid, self.kw, self.interpret = kernel, tuple(grid), kw, interpret
        self._grid3 = (*self.grid, 1, 1)[:3]
        self._tail = None  # the constexpr values in signature order, after the arguments
        self._tensors = self._others = ()  # positions of the tensor and other arguments
        self._compiled = {}

    def __call__(self, *args):
        global FAST_LAUNCH
        if self.interpret or not FAST_LAUNCH or inlining():
            return self.kernel[self.grid](*args, **self.kw)
        key, raw = [torch.cuda.current_device()], list(args)
        try:
            for i in self._tensors:
                t = args[i]
                p = raw[i] = t.data_ptr()
                key += (t.dtype, t.get_device(), p & 15)
        except AttributeError:  # not a tensor where the first launch had one
            key = None
        if key is not None and len(self._tensors) + len(self._others) == len(args):
            key += [args[i] for i in self._others]
            kernel = self._compiled.get(tuple(key))
        else:
            kernel = key = None
        if kernel is None:
            return self._first(key, args)
        try:
            if not _run_compiled(kernel, self._grid3, key[0], raw + self._tail):
                kernel[self._grid3](*args, *self._tail)
        except Exception as e:  # noqa: BLE001  (an unknown Triton version: use its own path)
            FAST_LAUNCH = False
            warnings.warn(f"torch_mhc: cached Triton launch failed ({type(e).__name__}: {e}); "
                          "using Triton's own launch from now on")
            return self.kernel.jit()[self.grid](*args, **self.kw)
        return kernel

    def _first(self, key, args):
        """Launch through Triton's own path and keep the compiled kernel for ``key`` (computed
        here when the argument positions were not known yet)."""
        tensors = tuple(i for i, a in enumerate(args) if isinstance(a, torch.Tensor))
        if key is None or tensors != self._tensors:
            self._tensors = tensors
            self._others = tuple(i for i in range(len(args)) if i not in tensors)
            key = [torch.cuda.current_device()]
            for i in tensors:
                key += (args[i].dtype, args[i].get_device(), args[i].data_ptr() & 15)
            key += [args[i] for i in self._others]
        kernel = self.kernel.jit()[self.grid](*args, **self.kw)
        if len(self._compiled) >= _FAST_CACHE_SIZE:  # bounded, whatever the launches
            self._compiled.clear()
        self._compiled[tuple(key)] = kernel
        if self._tail is None:
            self._tail = [self.kw[k] for k in self.kernel._param_names()[len(args):]]
        return kernel


def _run_compiled(kernel, grid3, device: int, raw) -> bool:
    """Launch ``kernel`` as ``kernel[grid3](*args)`` does in Triton 3.4 .. 3.9
    (``CompiledKernel.__getitem__`` and its ``runner``) when no launch hook is set: the
    launcher takes the grid, the stream, the kernel handle, its packed metadata, the launch
    metadata and the enter / exit hooks (``None``), then the kernel's arguments ``raw``
    (tensors as addresses). Skips building the runner closure, Triton's device and stream
    lookups, and (Triton >= 3.7, whose hooks are always-present chains) the launch metadata
    of every launch. Returns False, launching nothing, when a hook is set (a profiler such
    as Proton): the caller then launches through Triton's own path."""
    global _KNOBS
    if _KNOBS is None:
        from triton import knobs as _KNOBS
    hooks = _KNOBS.runtime
    if _hook_set(hooks.launch_enter_hook) or _hook_set(hooks.launch_exit_hook):
        return False
    kernel.run(grid3[0], grid3[1], grid3[2], torch._C._cuda_getCurrentRawStream(device),
               kernel.function, kernel.packed_metadata, None, None, None, *raw)
    return True


def _hook_set(hook) -> bool:
    """True for a launch hook that does something: a callable, or a non-empty hook chain
    (Triton >= 3.7 keeps an empty ``HookChain`` where older releases keep ``None``)."""
    return hook is not None and bool(getattr(hook, "calls", True))


_KNOBS = None  # ``triton.knobs``, imported on the first launch

#: Keys a kernel's fast-launch cache holds before it starts over.
_FAST_CACHE_SIZE = 1024

_DECORATED: dict = {}


def _decorate(fn, interpret: bool):
    """``triton.jit(fn)`` as Triton decorates it in that mode (it reads ``TRITON_INTERPRET``
    at decoration time), cached per function and mode."""
    key = (fn, interpret)
    out = _DECORATED.get(key)
    if out is None:
        import triton
        import triton.language as tl
        # the kernel sources use ``tl`` as a global; provide it here so that importing
        # torch_mhc does not import Triton
        fn.__globals__.setdefault("tl", tl)
        old = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
        try:
            out = _DECORATED[key] = triton.jit(fn)
        finally:
            if old is None:
                del os.environ["TRITON_INTERPRET"]
            else:
                os.environ["TRITON_INTERPRET"] = old
    return out


#: Launch cached compiled kernels directly (``TORCH_MHC_FAST_LAUNCH=0`` turns it off).
FAST_LAUNCH = env_flag("TORCH_MHC_FAST_LAUNCH", True)


@contextlib.contextmanager
def _interpretable_language():
    """Make ``triton.language``'s own ``@jit`` helpers (``tl.zeros``, ``tl.sum``, ...)
    callable by the interpreter for the duration of one launch.

    Triton decorates them when ``triton.language`` is first imported; if that happened
    without ``TRITON_INTERPRET=1`` (another module imported Triton first) they are compiled
    ``JITFunction``s that the interpreter refuses to call. They are swapped for interpreted
    twins here and restored afterwards, so the process can still compile for a GPU.

    The interpreter also rebinds ``triton.language``'s builtins (``tl.core.add``, ...) to
    interpreter versions for each device-function call and never restores them (seen with
    Triton 3.4 .. 3.9): a later GPU compile in the same process would then build its IR through
    the interpreter and fail (``'ir.value' object has no attribute 'dtype'``). The language
    modules and their classes get back every attribute they had (and the classes lose the
    ones the interpreter added, such as ``tensor.__bool__``) on exit.

    Triton < 3.7 turns a scalar kernel argument used as a loop bound into an int with
    ``int()`` of a one-element 1-D array, which numpy >= 2.4 refuses; ``.item()`` is used.
    """
    import triton.language as tl_mod
    import triton.runtime.interpreter as interp
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction
    patch_tensor = getattr(interp, "_patch_lang_tensor", None)
    if patch_tensor is not None:
        def _patch_lang_tensor(tensor, *args):
            patch_tensor(tensor, *args)
            tensor.__index__ = lambda self: int(self.handle.data.item())
        interp._patch_lang_tensor = _patch_lang_tensor
    mods = [tl_mod, tl_mod.core, tl_mod.standard, tl_mod.math]
    saved = [(obj, dict(vars(obj))) for obj in mods + [
        v for v in vars(tl_mod.core).values()
        if isinstance(v, type) and v.__module__.startswith("triton.language")]]
    for mod in mods:
        for name, val in list(vars(mod).items()):
            if isinstance(val, JITFunction) and not isinstance(val, InterpretedFunction):
                twin = _INTERPRETED.get(id(val))
                if twin is None:
                    twin = _INTERPRETED[id(val)] = InterpretedFunction(val.fn)
                setattr(mod, name, twin)
    try:
        yield
    finally:
        if patch_tensor is not None:
            interp._patch_lang_tensor = patch_tensor
        for obj, attrs in saved:
            now = vars(obj)
            if isinstance(obj, type):  # (a module keeps the globals the interpreter added)
                for name in [k for k in now if k not in attrs]:
                    delattr(obj, name)
            for name, val in attrs.items():
                if now.get(name, _MISSING) is not val:
                    setattr(obj, name, val)


_MISSING = object()


_INTERPRETED: dict = {}

def dot_mode(dtype: torch.dtype) -> int:
    """How the kernels run a product with float32 weights (``PREC`` constexpr).

    * 2: 16-bit ``bf16`` streams: the float32 operand is split ``w = hi + lo`` into two
      bf16 numbers and multiplied on the tensor cores as ``x hi + x lo`` (x is exact in bf16),
      about 16 mantissa bits, at bf16 speed;
    * 1: float32 / float16 streams: ``tf32x3`` (float32-level accuracy on tensor cores);
    * 0: the interpreter, exact float32 (``ieee``);
    * 3: the interpreter with bf16 streams: the split of mode 2 with float32 products (the
      interpreter cannot multiply bf16 matrices).
    """
    if dtype == torch.bfloat16:
        return 3 if interpret_mode() else 2
    return 0 if interpret_mode() else 1

@functools.lru_cache(maxsize=None)
def num_sms(index: int) -> int:
    """Multiprocessor count of CUDA device ``index`` (4 for the interpreter)."""
    if index < 0:
        return 4
    return torch.cuda.get_device_properties(index).multi_processor_count


def device_sms(device: torch.device) -> int:
    """Multiprocessor count of ``device`` (its CUDA index or the current one; 4 off CUDA)."""
    return num_sms(device.index if device.index is not None else torch.cuda.current_device()) \
        if device.type == "cuda" else 4


def fit_channel_tile(BC: int, C: int) -> int:
    """A channel tile ``BC`` fitted to ``C`` channels (32 at most in the interpreter, where
    small tiles run faster)."""
    BC = min(BC, next_pow2(C))
    return min(BC, 32) if interpret_mode() else BC
