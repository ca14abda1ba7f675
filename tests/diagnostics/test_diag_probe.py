import pytest
import torch

from torch_mhc.diagnostics import probe_diagnostics
from torch_mhc.models import GPT, DeepStack, DeepStackConfig, gpt_config


def _gpt(mode):
    return GPT(gpt_config("tiny", d_model=32, n_head=2, n_layer=2, seq_len=16, connection=mode))


@pytest.mark.parametrize("mode", ["residual", "hc", "mhc"])
def test_probe_gpt(mode):
    model = _gpt(mode)
    x = torch.randint(0, 256, (2, 16))
    rng = torch.get_rng_state()
    d = probe_diagnostics(model, x, x)
    assert torch.equal(rng, torch.get_rng_state())  # no randomness used
    L = 4
    assert all(len(v) == L for v in d["gain"].values())
    assert len(d["grad_param"]) == L and all(v is not None and v > 0 for v in d["grad_stream"])
    assert d["grad_param_ratio"] > 0 and d["grad_stream_ratio"] > 0
    assert all(p.grad is None for p in model.parameters())
    assert all(not c.record_mappings and c.last_mappings is None for c in model.connections())
    if mode == "residual":
        assert all(v == [1.0] * L for v in d["gain"].values())
        assert d["hres"] is None and d["pre"] is None
    else:
        assert len(d["hres_mean"]) == L and len(d["hres_mean"][0]) == 4
        assert len(d["pre"]["min"]) == L
    if mode == "mhc":
        assert max(d["gain"]["comp_fwd_max"]) == pytest.approx(1.0, abs=1e-5)
        assert max(d["hres"]["col_err_max"]) < 1e-5
    if mode == "hc":  # HC's published init: H_res = I exactly
        assert d["gain"]["comp_bwd_max"] == [1.0] * L


def test_probe_keeps_existing_grads_and_deep_stack():
    model = DeepStack(DeepStackConfig(depth=5, width=16, seq_len=8, connection="mhc"))
    x = torch.randint(0, 256, (2, 8))
    _, loss = model(x, x)
    loss.backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    d = probe_diagnostics(model, x, x)
    assert len(d["grad_param"]) == 5
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, before[n])
