"""Every fused kernel, with the arguments its launcher passes, compiles for Hopper (sm_90)
with Triton's bundled ptxas (``benchmarks/compile_sm90.py``; no GPU needed). Catches a kernel
signature that the launchers or that tool no longer match, which the interpreter tests do
not see (the interpreter never compiles)."""
import importlib.util
import os

import pytest

triton = pytest.importorskip("triton")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


@pytest.mark.skipif(not os.path.exists(PTXAS), reason="this Triton has no bundled ptxas")
def test_every_kernel_compiles_for_sm90(capsys):
    spec = importlib.util.spec_from_file_location(
        "compile_sm90", os.path.join(ROOT, "benchmarks", "compile_sm90.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rc = mod.main([])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "coef_dx4" in out and "post_res_bwd" in out
