"""The cached fast launch (``ops._launch``): what it keys a compiled kernel on and what it
hands Triton's launcher. The launch itself needs a GPU (the CUDA run of the op tests and
``benchmarks/host_overhead.py``, which checks that it gives the same bits as Triton's own
launch); these checks are the parts that can go wrong on any machine."""
from __future__ import annotations

import pytest
import torch

from torch_mhc.ops._launch import _hook_set


def test_launch_hooks_seen_in_both_triton_conventions():
    class Chain:  # Triton >= 3.7 keeps a chain of hooks, empty when none is set
        def __init__(self, calls):
            self.calls = calls
    assert not _hook_set(None) and not _hook_set(Chain([]))
    assert _hook_set(Chain([print])) and _hook_set(print)


class _FakeCompiled:
    """What Triton's first launch returns: a compiled kernel whose launcher records calls."""

    function, packed_metadata = 1234, ("meta",)

    def __init__(self):
        self.runs, self.indexed = [], []

    def run(self, *args):
        self.runs.append(args)

    def __getitem__(self, grid):  # Triton's own launch path (used when a hook is set)
        return lambda *args: self.indexed.append((grid, args))


def _fake_kernel(monkeypatch):
    """A LazyJit whose Triton side is replaced: ``jit()[grid](...)`` "compiles" once and
    returns the fake compiled kernel; CUDA device and stream lookups are stubbed."""
    from torch_mhc.ops import _launch

    compiled = _FakeCompiled()
    first = []

    class FakeJit:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                first.append((grid, args, kwargs))
                return compiled
            return launch

    def kern(a_ptr, b_ptr, T, BT: "constexpr"):  # noqa: F821  (a kernel's signature)
        pass

    k = _launch.LazyJit(kern)
    monkeypatch.setattr(k, "jit", lambda interpret=None: FakeJit())
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda d: 777, raising=False)
    return k, compiled, first


def test_fast_launch_first_compiles_then_hands_addresses(monkeypatch):
    k, compiled, first = _fake_kernel(monkeypatch)
    a, b = torch.randn(64), torch.randn(64)
    assert k._launch_bound((3,), a, b, 64, BT=16) is compiled
    assert len(first) == 1 and not compiled.runs  # the first launch goes through Triton
    k._launch_bound((3,), a, b, 64, BT=16)
    (args,) = compiled.runs
    # grid, stream, handle, metadata, no launch metadata or hooks, then the arguments with
    # tensors as addresses and the constexpr appended in signature order
    assert args == (3, 1, 1, 777, 1234, ("meta",), None, None, None, a.data_ptr(),
                    b.data_ptr(), 64, 16)
    k._launch_bound((3,), a[1:], b, 64, BT=16)  # another alignment: another compile
    assert len(first) == 2 and len(compiled.runs) == 1


def test_fast_launch_leaves_a_profiled_launch_to_triton(monkeypatch):
    """With a launch hook set (a profiler), the launch goes through Triton's own path with
    the tensors themselves."""
    from triton import knobs

    k, compiled, _ = _fake_kernel(monkeypatch)
    a, b = torch.randn(64), torch.randn(64)
    k._launch_bound((2, 2), a, b, 8, BT=16)
    hook = lambda *args: None  # noqa: E731
    monkeypatch.setattr(knobs.runtime, "launch_enter_hook", hook)
    k._launch_bound((2, 2), a, b, 8, BT=16)
    assert not compiled.runs
    ((grid, args),) = compiled.indexed
    assert grid == (2, 2, 1) and args[0] is a and args[2:] == (8, 16)


def test_fast_launch_falls_back_for_good_when_the_launcher_refuses(monkeypatch):
    from torch_mhc.ops import _launch

    k, compiled, first = _fake_kernel(monkeypatch)
    a, b = torch.randn(64), torch.randn(64)
    k._launch_bound((1,), a, b, 8, BT=16)

    def refuse(*args):
        raise TypeError("function takes exactly 34 arguments (33 given)")
    monkeypatch.setattr(compiled, "run", refuse)
    monkeypatch.setattr(_launch, "FAST_LAUNCH", True)
    with pytest.warns(UserWarning, match="cached Triton launch failed"):
        k._launch_bound((1,), a, b, 8, BT=16)
    assert _launch.FAST_LAUNCH is False and len(first) == 2  # relaunched through Triton


def test_fast_launch_keys_on_dtype_and_argument_values(monkeypatch):
    """A launch recompiles (goes through Triton) for another dtype or another integer
    value, and reuses the kernel for new tensors of the same kind."""
    k, compiled, first = _fake_kernel(monkeypatch)
    a, b = torch.randn(64), torch.randn(64)
    k._launch_bound((3,), a, b, 64, BT=16)
    k._launch_bound((3,), a.clone(), b.clone(), 64, BT=16)  # new tensors, same kind: cached
    assert len(first) == 1 and len(compiled.runs) == 1
    k._launch_bound((3,), a.double(), b, 64, BT=16)
    k._launch_bound((3,), a, b, 65, BT=16)
    assert len(first) == 3 and len(compiled.runs) == 1


def test_fast_launch_survives_a_non_tensor_where_a_tensor_was(monkeypatch):
    k, compiled, first = _fake_kernel(monkeypatch)
    a, b = torch.randn(64), torch.randn(64)
    k._launch_bound((3,), a, b, 64, BT=16)
    k._launch_bound((3,), a, 5, 64, BT=16)  # Triton's own path decides what it means
    assert len(first) == 2 and not compiled.runs
