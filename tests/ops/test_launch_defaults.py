"""The launchers' built-in configurations are the sweep winners we committed.

``benchmarks/sweep.py`` writes the fastest launch configuration of each kernel at the
``layer`` shape (T = C = 4096, n = 4, bf16) as a tuning JSON; our numbers are only what
users get if the launchers use those configurations *without* ``TORCH_MHC_TUNING``. A
default that drifted from its sweep once cost a kernel 3x (the pre-mix forward: 160 us with
its default, 53 us with the winner). This test records what each launcher asks ``tuned``
for (kernel launches replaced by no-ops) and compares with the committed tuning file.
"""
import importlib
import json
import pathlib

import pytest
import torch

pytest.importorskip("triton")

_backend, coefficients, post_res, pre_mix = (  # the modules (ops/__init__ exports functions
    importlib.import_module(f"torch_mhc.ops.{m}")  # of some of the same names)
    for m in ("_backend", "coefficients", "post_res", "pre_mix"))

RESULTS = pathlib.Path(__file__).parents[2] / "benchmarks" / "results"
TUNING_FILE = RESULTS / "tuning_h100_s3.json"
# later sweeps of some keys (an H200, session 7: the dx pass's G^T load)
LATER = {"coef_dx4": RESULTS / "tuning_h200_s7.json"}
# keys of the bf16, n = 4 path (the others were swept at a shape they do not serve)
KEYS = ("coef_gemm", "coef_token", "coef_token_bwd", "coef_dx4", "pre_mix_fwd", "pre_mix_bwd",
        "post_res_fwd", "post_res_bwd")


@pytest.fixture
def recorded(monkeypatch):
    seen = {}

    def record(name, **defaults):
        seen[name] = dict(defaults)
        return defaults

    for mod in (coefficients, post_res, pre_mix):
        monkeypatch.setattr(mod, "tuned", record)
    monkeypatch.setattr(_backend.LazyJit, "__getitem__", lambda self, grid: lambda *a, **k: None)
    monkeypatch.setattr(_backend, "TUNING", {})
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return seen


def test_defaults_are_the_committed_sweep_winners(recorded):
    T, n, C = 64, 4, 4096
    x = torch.randn(T, n, C).bfloat16()
    y = torch.randn(T, C).bfloat16()
    fn, base, scale = torch.randn((n + 2) * n, n * C), torch.randn((n + 2) * n), torch.rand(3)
    hp, hq, hr = torch.rand(T, n), torch.rand(T, n), torch.rand(T, n, n)
    mix = torch.rand(T, (n + 2) * n + 1)
    coefficients.coef_forward_triton(x, fn, base, scale, 20, 1e-20, 0.0)
    coefficients.coef_backward_triton(x, fn, base, scale, mix, hp, hq, hr, 20, 0.0,
                                      h_pre=hp, dh=y, h_res=hr, gout=x)
    pre_mix.pre_mix_forward_triton(x, hp)
    pre_mix.pre_mix_backward_triton(x, hp, y, False)
    post_res.post_res_forward_triton(x, y, hq, hr)
    post_res.post_res_backward_triton(x, y, hq, hr, x, False)
    winners = json.loads(TUNING_FILE.read_text())
    assert winners["coef_bwd"]["kernel"] == recorded["coef_bwd"]["kernel"]
    for key, path in LATER.items():
        winners[key] = {**winners[key], **json.loads(path.read_text())[key]}
    for key in KEYS:
        want = winners[key]
        got = {k: recorded[key].get(k) for k in want}
        assert got == want, f"{key}: launcher default {recorded[key]} is not the sweep winner {want}"
