"""The cached fast launch (``ops._launch``): what it keys a compiled kernel on and what it
hands Triton's launcher. The launch itself needs a GPU (the CUDA run of the op tests and
``benchmarks/host_overhead.py``, which checks that it gives the same bits as Triton's own
launch); these checks are the parts that can go wrong on any machine."""
from __future__ import annotations

import torch

from torch_mhc.ops._launch import _hook_set, _specialise


def test_tensors_become_addresses_and_key_on_dtype_alignment_device():
    a = torch.randn(64)
    b = torch.randn(64, dtype=torch.float64)
    spec, raw = _specialise([a, b, a[1:], 7, 16, 1, 2**40, 1e-6, True])
    assert raw[:3] == [a.data_ptr(), b.data_ptr(), a.data_ptr() + 4]
    assert raw[3:] == [7, 16, 1, 2**40, 1e-6, True]
    assert spec[0] == (torch.float32, True, -1)      # a CPU tensor keys with device -1
    assert spec[1] == (torch.float64, True, -1)
    assert spec[2] == (torch.float32, False, -1)     # 4 bytes past an aligned start
    assert spec[3:7] == [(False, False, True), (False, True, True), (True, False, True),
                         (False, True, False)]
    assert spec[7:] == [float, bool]


def test_a_different_alignment_or_device_is_a_different_key():
    a = torch.randn(64)
    k1, _ = _specialise([a, 3])
    k2, _ = _specialise([a[2:], 3])
    k3, _ = _specialise([a.clone(), 3])
    assert k1 != k2 and k1 == k3


def test_launch_hooks_seen_in_both_triton_conventions():
    class Chain:  # Triton >= 3.7 keeps a chain of hooks, empty when none is set
        def __init__(self, calls):
            self.calls = calls
    assert not _hook_set(None) and not _hook_set(Chain([]))
    assert _hook_set(Chain([print])) and _hook_set(print)
