import hashlib

import pytest
import torch

from torch_mhc.models import GPT, gpt_config
from torch_mhc.train.checkpoint import (STATE, SUMS, WEIGHTS, CheckpointError,
                                        CheckpointManager, find_checkpoint, rng_state,
                                        set_rng_state, verify_checkpoint)


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
        CheckpointManager.read_state(d)
    # no checksums (an older checkpoint) and unreadable: damaged, and the only one
    with pytest.raises(CheckpointError, match="every checkpoint in .* is damaged"):
        find_checkpoint(tmp_path)


def test_rng_roundtrip():
    s = rng_state()
    a = torch.rand(3)
    set_rng_state(s)
    assert torch.equal(a, torch.rand(3))


def _saved(tmp_path, steps=(1, 2, 3), keep_last=3):
    m = _model()
    opt = torch.optim.AdamW(m.parameters())
    x = torch.randint(0, 256, (2, 8))
    mgr = CheckpointManager(tmp_path, keep_last=keep_last)
    for step in steps:
        m(x, x)[1].backward()
        opt.step()
        mgr.save(step, m, opt, {"config": {"lr": 0.1}})
    return mgr


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _flip_bit(path, at=0.6):
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x04
    path.write_bytes(bytes(data))


def test_checkpoints_carry_sha256_sums(tmp_path):
    path = _saved(tmp_path, steps=(1,)).latest()
    sums = dict(reversed(line.split("  ")) for line in (path / SUMS).read_text().splitlines())
    for name in (WEIGHTS, STATE):
        assert sums[name] == hashlib.sha256((path / name).read_bytes()).hexdigest()
    assert verify_checkpoint(path) is None


@pytest.mark.parametrize("damage", [_truncate, _flip_bit])
@pytest.mark.parametrize("name", [WEIGHTS, STATE])
def test_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_path, damage, name):
    mgr = _saved(tmp_path)
    step2, step3 = mgr.list()[1:]
    damage(step3 / name)
    assert name in verify_checkpoint(step3) and verify_checkpoint(step2) is None
    notes = []
    assert find_checkpoint(tmp_path, notes.append) == step2
    assert len(notes) == 1 and str(step3) in notes[0] and name in notes[0]
    assert mgr.latest_intact() == step2
    # a damaged checkpoint named directly is refused, naming the previous intact one
    with pytest.raises(CheckpointError, match=f"{step3.name} is damaged.*--resume {step2}"):
        find_checkpoint(step3)


def test_all_checkpoints_damaged(tmp_path):
    mgr = _saved(tmp_path, steps=(1, 2))
    for d in mgr.list():
        _flip_bit(d / WEIGHTS)
    with pytest.raises(CheckpointError, match="every checkpoint .* is damaged"):
        find_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no earlier intact checkpoint"):
        find_checkpoint(mgr.latest())


def test_checkpoint_without_sums_is_checked_for_readability(tmp_path):
    mgr = _saved(tmp_path, steps=(1, 2))
    for d in mgr.list():
        (d / SUMS).unlink()
    assert find_checkpoint(tmp_path) == mgr.list()[-1]  # an older, intact checkpoint
    _truncate(mgr.list()[-1] / WEIGHTS)
    assert find_checkpoint(tmp_path) == mgr.list()[0]


def test_a_newer_checkpoint_never_prunes_the_one_just_written(tmp_path):
    """Resumed from step 1 past a damaged step 3, keep_last=1: saving step 2 keeps step 2."""
    mgr = _saved(tmp_path, steps=(1, 3), keep_last=2)
    _flip_bit(mgr.latest() / WEIGHTS)
    mgr.keep_last = 1
    m = _model()
    mgr.save(2, m, torch.optim.AdamW(m.parameters()), {})
    assert [p.name for p in mgr.list()] == ["step_00000002", "step_00000003"]
    assert mgr.latest_intact().name == "step_00000002"
