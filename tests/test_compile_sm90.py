"""Every fused kernel, with the arguments its launcher passes, compiles for Hopper (sm_90)
with Triton's bundled ptxas (``benchmarks/compile_sm90.py``; no GPU needed). Catches a kernel
signature that the launchers or that tool no longer match, which the interpreter tests do
not see (the interpreter never compiles). A kernel first runs in the interpreter, as in a
test run, and the compile starts from an empty cache: a cached kernel is not rebuilt,
and would hide a frontend that this process left broken (Triton's interpreter once did)."""
import importlib.util
import os

import pytest

triton = pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


@pytest.mark.skipif(not os.path.exists(PTXAS), reason="this Triton has no bundled ptxas")
def test_every_kernel_compiles_for_sm90(capsys, monkeypatch, tmp_path):
    import torch
    from torch_mhc.ops.coefficients import mhc_coefficients
    from torch_mhc.testing import triton_interpreter
    n, C = 4, 32
    x = torch.randn(3, n, C).bfloat16().requires_grad_()
    with triton_interpreter():
        h = mhc_coefficients(x, torch.randn((n + 2) * n, n * C) * 0.05, torch.randn((n + 2) * n),
                             torch.rand(3), backend="triton")
        sum(t.sum() for t in h).backward()
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    spec = importlib.util.spec_from_file_location(
        "compile_sm90", os.path.join(ROOT, "benchmarks", "compile_sm90.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rc = mod.main([])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "coef_dx4" in out and "post_res_bwd" in out
    assert any(tmp_path.iterdir()), "the kernels were not compiled afresh"
