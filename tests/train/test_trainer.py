import json
import math

import pytest
import torch

from torch_mhc.train import Trainer, lr_at, resolve_config
from torch_mhc.train.checkpoint import CheckpointError
from torch_mhc.train.config import ConfigError
from torch_mhc.train.logs import read_log


def _cfg(small, tmp_path, **kw):
    return resolve_config(small(tmp_path, **kw))[0]


def _records(out, kind):
    return [r for r in read_log(f"{out}/log.jsonl") if r["type"] == kind]


def _losses(out):
    return [(r["step"], r["loss"]) for r in _records(out, "train")]


def test_run_writes_log_summary_checkpoints(small, tmp_path):
    cfg = _cfg(small, tmp_path, max_steps=7, keep_last=2)
    s = Trainer(cfg).fit()
    out = tmp_path / "run"
    assert [st for st, _ in _losses(out)] == list(range(1, 8))
    assert [r["step"] for r in _records(out, "eval")] == [0, 3, 6, 7]
    assert [r["step"] for r in _records(out, "diag")] == [0, 2, 4, 6, 7]
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step_00000006", "step_00000007"]  # keep_last=2
    assert json.loads((out / "summary.json").read_text()) == s
    assert s["completed"] and not s["diverged"] and s["steps"] == 7
    assert s["max_composite_forward_gain"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("mode", ["mhc", "hc"])
def test_resume_gives_the_same_losses(small, tmp_path, monkeypatch, mode):
    full = _cfg(small, tmp_path / "a", max_steps=8, ckpt_interval=4, connection=mode)
    Trainer(full).fit()

    cut = _cfg(small, tmp_path / "b", max_steps=8, ckpt_interval=4, connection=mode)
    real_step = Trainer.train_step

    def interrupted(self, step):
        if step == 6:
            raise KeyboardInterrupt
        return real_step(self, step)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cut).fit()
    monkeypatch.setattr(Trainer, "train_step", real_step)
    b = tmp_path / "b" / "run"
    assert len(_losses(b)) == 6  # steps 5, 6 ran after the checkpoint at 4
    Trainer(cut, resume=str(b)).fit()

    a = tmp_path / "a" / "run"
    assert _losses(b) == _losses(a)  # exact, step by step, no duplicates
    assert _records(b, "eval") == _records(a, "eval")
    assert _records(b, "diag") == _records(a, "diag")
    wa = Trainer(full, resume=str(a)).model.state_dict()
    wb = Trainer(cut, resume=str(b)).model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_compiled_training_equals_eager(small, tmp_path, capsys):
    # reduce-overhead: CUDA graphs on a GPU (the gradients accumulated in place, the losses
    # summed as they come); on a CPU Inductor runs it without graphs, the same code path here.
    # Block scope: three blocks compiled one by one, the diagnostics run them eagerly.
    # (A whole compiled model equals eager in tests/models/test_compile.py.)
    from torch._dynamo.utils import counters
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    kw = dict(max_steps=3, grad_accum=2, n_layer=3, device=dev, dtype="float32")
    Trainer(_cfg(small, tmp_path / "eager", **kw)).fit()
    torch._dynamo.reset()
    counters.clear()
    Trainer(_cfg(small, tmp_path / "compiled", compile=True, compile_mode="reduce-overhead",
                 compile_scope="block", **kw)).fit()
    # training and evaluation each: the first block (broadcast streams) and one graph that
    # the other two blocks share
    assert counters["stats"]["unique_graphs"] == 4
    assert "torch.compile (reduce-overhead mode, block scope)" in capsys.readouterr().out
    runs = [{r["step"]: r for r in _records(tmp_path / d / "run", k)}
            for d in ("eager", "compiled") for k in ("train", "eval", "diag")]
    for eager, compiled in zip(runs[:3], runs[3:]):
        assert eager.keys() == compiled.keys() and len(eager) > 1
        for step, r in eager.items():
            for key in ("loss", "grad_norm", "val_loss", "grad_param"):
                if key in r:
                    assert compiled[step][key] == pytest.approx(r[key], rel=1e-4), (step, key)


def test_compile_mode_needs_compile_and_one_process(small, tmp_path):
    with pytest.raises(ConfigError, match="needs compile"):
        _cfg(small, tmp_path, compile_mode="reduce-overhead")
    with pytest.raises(ConfigError, match="one process"):
        _cfg(small, tmp_path, compile=True, compile_mode="reduce-overhead", parallel="ddp")
    with pytest.raises(ConfigError, match="needs compile"):
        _cfg(small, tmp_path, compile_scope="block")
    with pytest.raises(ConfigError, match="spans blocks"):
        _cfg(small, tmp_path, compile=True, compile_scope="block", recompute_block=2)


def test_resume_refuses_a_different_config(small, tmp_path):
    Trainer(_cfg(small, tmp_path, connection="hc")).fit()
    other = _cfg(small, tmp_path, connection="mhc", d_model=64)
    with pytest.raises(CheckpointError, match="different configuration") as e:
        Trainer(other, resume=str(tmp_path / "run"))  # refused before anything is built
    assert "connection: checkpoint 'hc', this run 'mhc'" in str(e.value)
    assert "--connection hc" in str(e.value) and "--d-model 32" in str(e.value)


def test_diagnostics_do_not_change_training(small, tmp_path):
    Trainer(_cfg(small, tmp_path / "on", diag_interval=1)).fit()
    Trainer(_cfg(small, tmp_path / "off", diag_interval=0)).fit()
    assert _losses(tmp_path / "on" / "run") == _losses(tmp_path / "off" / "run")
    assert not _records(tmp_path / "off" / "run", "diag")


def test_stream_recompute_does_not_change_training(small, tmp_path):
    on = Trainer(_cfg(small, tmp_path / "on", n_layer=2, recompute_block=2, max_steps=3))
    assert on.model.cfg.recompute_block == 2
    on.fit()
    Trainer(_cfg(small, tmp_path / "off", n_layer=2, max_steps=3)).fit()
    assert _losses(tmp_path / "on" / "run") == _losses(tmp_path / "off" / "run")
    with pytest.raises(ConfigError, match="recompute_block"):
        _cfg(small, tmp_path, recompute_block=-2)


def test_modes_share_initial_weights_and_data(small, tmp_path):
    models = {m: Trainer(_cfg(small, tmp_path / m, connection=m)).model
              for m in ("residual", "hc", "mhc")}
    ref = models["residual"].state_dict()
    for m in ("hc", "mhc"):
        sd = models[m].state_dict()
        shared = [k for k in ref if k in sd]
        assert len(shared) == len(ref)
        assert all(torch.equal(ref[k], sd[k]) for k in shared)


def _poison(trainer, at_steps):
    """Make the loss NaN at the given (0-based) steps."""
    real = trainer.step_model
    calls = {"step": 0}

    def fwd(x, y):
        logits, loss = real(x, y)
        if calls["step"] in at_steps:
            loss = loss * float("nan")
        return logits, loss
    trainer.step_model = fwd
    real_train = trainer.train_step

    def step(s):
        calls["step"] = s
        return real_train(s)
    trainer.train_step = step


def test_nonfinite_stops_and_keeps_last_good_checkpoint(small, tmp_path, capsys):
    t = Trainer(_cfg(small, tmp_path, max_steps=8, ckpt_interval=3))
    _poison(t, {4})
    s = t.fit()
    assert s["diverged"] and s["diverged_at_step"] == 5
    ckpts = [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()]
    assert ckpts == ["step_00000003"]
    out = capsys.readouterr().out
    assert "non-finite loss or gradient at step 5" in out and "step_00000003" in out
    stop = [r for r in read_log(tmp_path / "run" / "log.jsonl") if r.get("event") == "stop"]
    assert len(stop) == 1 and stop[0]["checkpoint"].endswith("step_00000003")


def test_nonfinite_skip(small, tmp_path):
    t = Trainer(_cfg(small, tmp_path, on_nonfinite="skip"))
    _poison(t, {2, 3})
    before = {}
    real_train = t.train_step

    def step(s):
        if s == 2:
            before.update({k: v.clone() for k, v in t.model.state_dict().items()})
        rec = real_train(s)
        if s == 3:  # two skipped steps: weights unchanged
            assert all(torch.equal(before[k], v) for k, v in t.model.state_dict().items())
        return rec
    t.train_step = step
    s = t.fit()
    assert not s["diverged"] and s["skipped_steps"] == 2 and s["steps"] == 6
    t2 = Trainer(_cfg(small, tmp_path / "b", on_nonfinite="skip", max_skips=1))
    _poison(t2, {2, 3})
    assert t2.fit()["diverged_at_step"] == 4


def test_clipping_is_reported(small, tmp_path):
    s = Trainer(_cfg(small, tmp_path, grad_clip=1e-3)).fit()
    recs = _records(tmp_path / "run", "train")
    assert all(r["clipped"] for r in recs) and s["clipped_fraction"] == 1.0
    assert all(r["grad_norm"] > 1e-3 for r in recs)


def test_deep_model_and_grad_accum(small, tmp_path):
    s = Trainer(_cfg(small, tmp_path, preset="deep-tiny", n_layer=3, grad_accum=2,
                     max_steps=3)).fit()
    assert s["model"] == "deep" and s["tokens"] == 3 * 2 * 16 * 2
    d = _records(tmp_path / "run", "diag")[-1]
    assert len(d["grad_param"]) == 3


def test_bf16_autocast_on_cpu(small, tmp_path):
    s = Trainer(_cfg(small, tmp_path, dtype="bfloat16", max_steps=2)).fit()
    assert s["dtype"] == "bfloat16" and math.isfinite(s["final_train_loss"])


def test_lr_schedule(small, tmp_path):
    cfg = _cfg(small, tmp_path, lr=1.0, warmup_steps=4, max_steps=104, min_lr_ratio=0.1)
    assert [lr_at(s, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(54, cfg) == pytest.approx(0.55)
    assert lr_at(104, cfg) == pytest.approx(0.1)


def test_resume_into_a_folder_holding_another_run_needs_overwrite(small, tmp_path):
    """--resume A --out B must not replace B's log or mix checkpoints without --overwrite."""
    Trainer(_cfg(small, tmp_path / "a", max_steps=3)).fit()
    Trainer(_cfg(small, tmp_path / "b", max_steps=3, lr=1e-2)).fit()
    a, b = tmp_path / "a" / "run", tmp_path / "b" / "run"
    log_b = (b / "log.jsonl").read_text()
    cont = _cfg(small, tmp_path / "b", max_steps=6)
    with pytest.raises(ConfigError, match="already holds a run"):
        Trainer(cont, resume=str(a))
    assert (b / "log.jsonl").read_text() == log_b
    Trainer(cont, resume=str(a), overwrite=True).fit()
    assert [p.name for p in (b / "checkpoints").iterdir()] == ["step_00000006"]
    assert _losses(b)[:3] == _losses(a)  # B now holds A's run, continued
    Trainer(cont, resume=str(b)).fit()  # continuing B's own run needs no --overwrite


def test_signal_checkpoints_the_finished_step_and_resume_is_exact(small, tmp_path, monkeypatch):
    import signal

    full = _cfg(small, tmp_path / "a", max_steps=8, ckpt_interval=4)
    Trainer(full).fit()

    cut = _cfg(small, tmp_path / "b", max_steps=8, ckpt_interval=4)
    real_step = Trainer.train_step

    def signalled(self, step):
        out = real_step(self, step)
        if step == 4:  # during the 5th step, as a cluster's SIGTERM or a Ctrl-C would
            signal.raise_signal(signal.SIGTERM)
        return out

    monkeypatch.setattr(Trainer, "train_step", signalled)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cut).fit()
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored
    monkeypatch.setattr(Trainer, "train_step", real_step)
    b = tmp_path / "b" / "run"
    assert (b / "checkpoints" / "step_00000005").is_dir()  # not a multiple of ckpt_interval
    assert [r["step"] for r in _records(b, "event") if r["event"] == "interrupt"] == [5]
    Trainer(cut, resume=str(b)).fit()
    assert _losses(b) == _losses(tmp_path / "a" / "run")
    assert _records(b, "eval") == _records(tmp_path / "a" / "run", "eval")
