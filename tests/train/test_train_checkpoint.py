import pytest
import torch

from torch_mhc.models import GPT, gpt_config
from torch_mhc.train.checkpoint import (CheckpointError, CheckpointManager, find_checkpoint,
                                        rng_state, set_rng_state)


def _model():
    return GPT(gpt_config("tiny", d_model=32, n_head=2, n_layer=1, seq_len=8))


def test_save_load_roundtrip_with_tied_weights(tmp_path):
    m = _model()
    assert m.head.weight is m.embed.weight
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    x = torch.randint(0, 256, (2, 8))
    m(x, x)[1].backward()
    opt.step()
    mgr = CheckpointManager(tmp_path, keep_last=2)
    path = mgr.save(5, m, opt, {"note": "hi"})
    assert path.name == "step_00000005" and mgr.latest() == path
    m2 = _model()
    opt2 = torch.optim.AdamW(m2.parameters(), lr=1e-3)
    state = mgr.read_state(path)
    mgr.load(path, m2, opt2, state, "cpu")
    assert state["note"] == "hi" and state["step"] == 5
    assert m2.head.weight is m2.embed.weight  # still tied
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k])
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"],
                       opt2.state_dict()["state"][0]["exp_avg"])


def test_keep_last_and_atomic_leftovers(tmp_path):
    m = _model()
    opt = torch.optim.AdamW(m.parameters())
    mgr = CheckpointManager(tmp_path, keep_last=2)
    for step in (1, 2, 3):
        mgr.save(step, m, opt, {})
    assert [p.name for p in mgr.list()] == ["step_00000002", "step_00000003"]
    # a crash mid-save leaves only a temporary folder, which is ignored and cleaned
    broken = tmp_path / "checkpoints" / ".tmp-step_00000004-123"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"partial")
    half = tmp_path / "checkpoints" / "step_00000009"  # no state file: not complete
    half.mkdir()
    assert mgr.latest().name == "step_00000003"
    assert find_checkpoint(tmp_path).name == "step_00000003"
    mgr.clean_temporary()
    assert not broken.exists()
    mgr.save(3, m, opt, {"again": True})  # re-saving a step replaces it
    assert mgr.read_state(mgr.latest())["again"]


def test_find_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        find_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        find_checkpoint(tmp_path)
    d = tmp_path / "checkpoints" / "step_00000001"
    d.mkdir(parents=True)
    (d / "state.pt").write_bytes(b"garbage")
    (d / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read"):
        CheckpointManager.read_state(find_checkpoint(tmp_path))


def test_rng_roundtrip():
    s = rng_state()
    a = torch.rand(3)
    set_rng_state(s)
    assert torch.equal(a, torch.rand(3))
