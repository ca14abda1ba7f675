"""Trackers: per-layer diagnostics to TensorBoard, and W&B / trackio through one interface."""
import sys
import types

import pytest
import torch

from torch_mhc.diagnostics import probe_diagnostics
from torch_mhc.models import GPT, GPTConfig
from torch_mhc.train import TrainConfig, Trainer
from torch_mhc.train.cli import main
from torch_mhc.train.logs import RunLog, clean_json, read_log
from torch_mhc.train.trackers import hres_image, per_layer, scalars


def diag_record(mode, step=4):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, seq_len=8, n_layer=2, d_model=32, n_head=2,
                          connection=mode, n=4))
    x = torch.randint(0, 64, (2, 8))
    return clean_json({"type": "diag", "step": step, **probe_diagnostics(model, x, x)})


def test_scalars_hold_the_per_layer_diagnostics():
    rec = diag_record("hc")
    s = scalars(rec)
    layers = len(rec["grad_param"])
    assert layers == 4  # 2 blocks x (attention, MLP)
    for i in range(layers):
        assert s[f"composite_forward_gain_per_layer/{i:03d}"] == rec["gain"]["comp_fwd_max"][i]
        assert s[f"forward_gain_per_layer/{i:03d}"] == rec["gain"]["fwd_max"][i]
        assert s[f"grad_param_norm_per_layer/{i:03d}"] == rec["grad_param"][i]
    assert s["diag/composite_forward_gain"] == max(rec["gain"]["comp_fwd_max"])
    assert s["diag/hres_col_err_max"] == max(rec["hres"]["col_err_max"])
    assert s["diag/probe_loss"] == rec["loss"]
    assert scalars({"type": "train", "step": 3, "loss": None, "lr": 0.1}) == {"train/lr": 0.1}
    assert scalars({"type": "event", "step": 3, "event": "skip"}) == {}
    plain = scalars(diag_record("residual"))  # no H_res: gains are 1, no H_res statistics
    assert plain["composite_forward_gain_per_layer/003"] == 1.0
    assert not any(k.startswith("diag/hres") for k in plain)


def test_hres_image_colours_and_layout():
    eye, neg = [[1.0, 0.0], [0.0, 1.0]], [[0.25, -0.5], [0.75, 2.0]]
    img = hres_image([eye, neg, eye], cell=3)
    assert img.shape == (3, 2 * 7 + 1, 2 * 7 + 1)  # 3 blocks in a 2 x 2 grid, 1-px gaps
    assert img.min() >= 0 and img.max() <= 1
    first = img[:, 1:7, 1:7]
    assert torch.equal(first[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))   # diagonal: red
    assert torch.equal(first[:, 0, 5], torch.tensor([0.0, 0.0, 0.0]))   # zero: black
    second = img[:, 1:7, 8:14]
    assert torch.equal(second[:, 0, 4], torch.tensor([0.0, 0.0, 0.5]))  # -0.5: blue
    assert torch.equal(second[:, 4, 4], torch.tensor([1.0, 0.0, 0.0]))  # 2.0 saturates
    assert torch.equal(img[:, 10, 10], torch.tensor([0.5, 0.5, 0.5]))   # empty 4th slot
    assert hres_image(None) is None


def test_tensorboard_gets_scalars_histograms_and_the_heat_map(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    log = RunLog(tmp_path / "log.jsonl", tensorboard=True)
    assert log.tensorboard_enabled
    rec = diag_record("mhc", step=4)
    for r in ({"type": "config", "config": {}}, {"type": "train", "step": 1, "loss": 2.5,
                                                 "lr": 1e-3, "grad_norm": 0.7}, rec):
        log.write(r)
    log.close()
    log.close()  # idempotent
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0}).Reload()
    tags = acc.Tags()
    assert acc.Scalars("train/loss")[0].value == pytest.approx(2.5)
    got = acc.Scalars("composite_forward_gain_per_layer/002")[0]
    assert got.step == 4 and got.value == pytest.approx(rec["gain"]["comp_fwd_max"][2])
    assert {"hist/composite_forward_gain", "hist/grad_param_norm", "hist/hres_entries"} <= set(
        tags["histograms"])
    entries = acc.Histograms("hist/hres_entries")[0].histogram_value
    assert entries.num == 4 * 4 * 4 and entries.sum == pytest.approx(4 * 4, rel=1e-4)  # rows sum to 1
    image = acc.Images("hres/mean_per_connection")[0]
    assert (image.width, image.height) == (2 * (4 * 8 + 1) + 1,) * 2
    assert [r["type"] for r in read_log(tmp_path / "log.jsonl")] == ["config", "train", "diag"]


@pytest.fixture
def fake_tracker(monkeypatch):
    """A stand-in for the wandb / trackio module that records what it is given."""
    def make(name):
        calls = []
        mod = types.ModuleType(name)
        mod.init = lambda **kw: calls.append(("init", kw)) or object()
        mod.log = lambda values, step=None: calls.append(("log", step, dict(values)))
        mod.finish = lambda: calls.append(("finish",))
        monkeypatch.setitem(sys.modules, name, mod)
        monkeypatch.delenv(f"{name.upper()}_PROJECT", raising=False)
        return calls
    return make


def test_wandb_gets_the_run_and_its_per_layer_diagnostics(tmp_path, small, fake_tracker):
    name = "wandb"
    calls = fake_tracker(name)
    Trainer(TrainConfig(**small(tmp_path, tracker=name)).validate()).fit()
    assert calls[0][0] == "init" and calls[-1] == ("finish",)
    init = calls[0][1]
    assert init["project"] == "torch-mhc" and init["name"] == f"{tmp_path.name}/run"
    assert init["config"]["tracker"] == name and init["config"]["max_steps"] == 6
    logs = [c for c in calls if c[0] == "log"]
    train = [c for c in logs if "train/loss" in c[2]]
    assert [c[1] for c in train] == [1, 2, 3, 4, 5, 6]
    diag = [c for c in logs if "diag/composite_forward_gain" in c[2]]
    assert [c[1] for c in diag] == [0, 2, 4, 6]
    records = {r["step"]: r for r in read_log(tmp_path / "run" / "log.jsonl")
               if r["type"] == "diag"}
    for _, step, values in diag:  # the per-layer values of the log, layer by layer
        assert {k: v for k, v in values.items() if "_per_layer/" in k} == {
            f"{k}_per_layer/{i:03d}": v for k, vals in per_layer(records[step]).items()
            for i, v in enumerate(vals)}
        assert len([k for k in values if k.startswith("forward_gain_per_layer/")]) == 2


def test_trackio_through_the_same_interface(tmp_path, fake_tracker, monkeypatch):
    calls = fake_tracker("trackio")
    monkeypatch.setenv("TRACKIO_PROJECT", "study")
    (tmp_path / "a").mkdir()
    log = RunLog(tmp_path / "a" / "log.jsonl", tracker="trackio")
    rec = diag_record("hc", step=8)
    for r in ({"type": "config", "config": {"lr": 0.1}}, {"type": "eval", "step": 8,
                                                          "val_loss": 1.5}, rec):
        log.write(r)
    log.close()
    assert calls[0] == ("init", {"project": "study", "name": f"{tmp_path.name}/a",
                                 "config": {"lr": 0.1}})
    assert calls[1] == ("log", 8, {"val/loss": 1.5})
    assert calls[2] == ("log", 8, scalars(rec)) and calls[3] == ("finish",)


def test_a_tracker_that_is_not_installed_is_one_line(tmp_path, flags, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)
    out = tmp_path / "run"
    assert main(["train", *flags(), "--tracker", "wandb", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("mhc train: error: --tracker wandb needs wandb, not installed: "
                   "pip install 'torch-mhc[wandb]'")
    assert not out.exists()  # nothing written before the inputs were checked
