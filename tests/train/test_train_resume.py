"""Resuming keeps what the user set: settings come from the run (or the comparison), a
flag given on resume is refused (model, data, batch, seed) or applied and stated, and a
damaged newest checkpoint is passed over for the previous intact one."""
import json

import pytest

from torch_mhc.train import Trainer, lr_at, resolve_config
from torch_mhc.train.checkpoint import WEIGHTS
from torch_mhc.train.cli import main
from torch_mhc.train.logs import read_log

# a run whose settings differ from its preset's in every way a resume could lose
RUN = dict(max_steps=6, ckpt_interval=3, lr=5e-4, warmup_steps=2, eval_interval=3)


def _records(out, kind):
    return [r for r in read_log(out / "log.jsonl") if r["type"] == kind]


def _losses(out):
    return [(r["step"], r["loss"]) for r in _records(out, "train")]


def _interrupt_at(monkeypatch, step, connection=None):
    """Make the next runs stop with Ctrl-C before 0-based step ``step``."""
    real = Trainer.train_step

    def train_step(self, s):
        if s == step and connection in (None, self.cfg.connection):
            raise KeyboardInterrupt
        return real(self, s)
    monkeypatch.setattr(Trainer, "train_step", train_step)
    return lambda: monkeypatch.setattr(Trainer, "train_step", real)


def _one_line_error(capsys, cmd):
    err = capsys.readouterr().err
    assert err.startswith(f"mhc {cmd}: error:") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def test_bare_resume_takes_every_setting_from_the_run(flags, tmp_path, monkeypatch, capsys):
    """`mhc train --out DIR --resume` with no other flag: not the preset's max_steps, lr,
    warm-up or shape, but the run's; and the result equals an uninterrupted run."""
    ref, out = tmp_path / "ref", tmp_path / "cut"
    assert main(["train", *flags(**RUN), "--out", str(ref)]) == 0
    restore = _interrupt_at(monkeypatch, 4)
    assert main(["train", *flags(**RUN), "--out", str(out)]) == 130
    restore()
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume"]) == 0
    said = capsys.readouterr().out
    assert "resumed from" in said and "step_00000003 at step 3" in said
    assert "same settings as the checkpoint" in said
    header = _records(out, "config")[-1]["config"]
    assert {k: header[k] for k in RUN} == RUN and header["d_model"] == 32
    assert _losses(out) == _losses(ref)
    assert _records(out, "eval") == _records(ref, "eval")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["completed"]


def test_resume_applies_and_states_a_changed_flag(flags, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *flags(**RUN), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--max-steps", "8", "--lr",
                 "1e-3"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "resumed from" in line]
    assert len(lines) == 1
    assert "changed since the checkpoint: max_steps 6 -> 8, lr 0.0005 -> 0.001" in lines[0]
    event = [r for r in _records(out, "event") if r["event"] == "resume"][-1]
    assert event["changed"] == {"max_steps": [6, 8], "lr": [5e-4, 1e-3]}
    cfg = resolve_config({**RUN, "max_steps": 8, "lr": 1e-3})[0]
    new = {r["step"]: r["lr"] for r in _records(out, "train") if r["step"] > 6}
    assert new == {7: lr_at(6, cfg), 8: lr_at(7, cfg)}
    assert json.loads((out / "summary.json").read_text())["steps"] == 8


@pytest.mark.parametrize("extra, named", [
    (["--d-model", "64"], "d_model: checkpoint 32, this run 64"),
    (["--preset", "small"], "preset: checkpoint 'tiny', this run 'small'"),
    (["--connection", "hc"], "connection: checkpoint 'mhc', this run 'hc'"),
    (["--batch-size", "4"], "batch_size: checkpoint 2, this run 4"),
])
def test_resume_refuses_changing_the_model_data_or_batch(flags, tmp_path, capsys, extra,
                                                         named):
    out = tmp_path / "run"
    assert main(["train", *flags(max_steps=2), "--out", str(out)]) == 0
    log = (out / "log.jsonl").read_text()
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", *extra]) == 2
    err = _one_line_error(capsys, "train")
    assert named in err and "fixed for a run" in err
    assert (out / "log.jsonl").read_text() == log


def test_resume_applies_changed_optimizer_settings(small, tmp_path):
    """AdamW's betas, eps and weight decay come from the settings, not from the saved
    optimizer state (which would otherwise restore the old ones silently)."""
    Trainer(resolve_config(small(tmp_path, max_steps=2))[0]).fit()
    cfg = resolve_config(small(tmp_path, max_steps=3, beta2=0.9, adam_eps=1e-6,
                               weight_decay=0.05))[0]
    t = Trainer(cfg, resume=str(tmp_path / "run"))
    t._restore(t.resume_from, t.resume_state)
    decay, no_decay = t.optimizer.param_groups
    assert tuple(decay["betas"]) == (0.9, 0.9) and decay["eps"] == 1e-6
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert t.optimizer.state  # the moments themselves were restored


def test_resume_past_a_damaged_checkpoint_is_exact(flags, tmp_path, capsys):
    """A bit flipped in the newest checkpoint's weights: resume names it, continues from
    the previous intact one and ends with the same losses as an uninterrupted run."""
    run = dict(RUN, max_steps=8, ckpt_interval=4)
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert main(["train", *flags(**run), "--out", str(ref)]) == 0
    assert main(["train", *flags(**run), "--out", str(out)]) == 0
    weights = out / "checkpoints" / "step_00000008" / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume"]) == 0
    said = capsys.readouterr().out
    assert "step_00000008: model.safetensors does not match the checksum" in said
    assert "using the previous intact one" in said and "at step 4" in said
    assert _losses(out) == _losses(ref)
    event = [r for r in _records(out, "event") if r["event"] == "resume"][-1]
    assert event["checkpoint"].endswith("step_00000004") and "step_00000008" in event["damaged"][0]


def test_nonfinite_stop_names_the_last_intact_checkpoint(small, tmp_path, capsys):
    """The stop message's "last good checkpoint" is one whose files match their sums."""
    t = Trainer(resolve_config(small(tmp_path, max_steps=8, ckpt_interval=3))[0])
    real = t.train_step

    def step(s):
        rec = real(s)
        if s == 6:  # checkpoints 3 and 6 exist; damage 6, then the step goes non-finite
            weights = tmp_path / "run" / "checkpoints" / "step_00000006" / WEIGHTS
            weights.write_bytes(weights.read_bytes()[:100])
            rec = {**rec, "loss": float("nan"), "nonfinite": True}
        return rec
    t.train_step = step
    assert t.fit()["diverged"]
    out = capsys.readouterr().out
    assert "the last good checkpoint is" in out and "step_00000003" in out
    assert "step_00000006" not in out


def test_resume_keeps_an_unreadable_log_line(flags, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *flags(**RUN), "--out", str(out)]) == 0
    lines = (out / "log.jsonl").read_text().splitlines()
    lines[2] = lines[2][:15]
    (out / "log.jsonl").write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--max-steps", "7"]) == 0
    assert "line(s) 3 are not valid JSON; kept" in capsys.readouterr().out
    assert (out / "log.jsonl").read_text().splitlines()[2] == lines[2]
    assert json.loads((out / "summary.json").read_text())["steps"] == 7


# -- mhc compare --resume ---------------------------------------------------------------------

CMP = dict(max_steps=4, ckpt_interval=2, eval_interval=2, diag_interval=2, lr=5e-4,
           warmup_steps=1)


def test_compare_resume_skips_finished_modes_with_the_saved_settings(flags, tmp_path,
                                                                     monkeypatch, capsys):
    """`mhc compare --out DIR --resume` alone: the comparison's own settings (not the
    preset's), finished modes untouched, the unfinished one exact, config.json kept."""
    out, ref = tmp_path / "cmp", tmp_path / "ref"
    args = ["compare", *flags(**CMP), "--modes", "residual,mhc", "--out", str(out),
            "--no-report"]
    restore = _interrupt_at(monkeypatch, 3, connection="mhc")
    assert main(args) == 130
    restore()
    config = (out / "config.json").read_bytes()
    residual_log = (out / "residual" / "log.jsonl").read_bytes()
    residual_summary = (out / "residual" / "summary.json").read_bytes()
    capsys.readouterr()
    assert main(["compare", "--out", str(out), "--resume", "--no-report"]) == 0
    said = capsys.readouterr().out
    assert "residual: already finished, skipped" in said
    assert (out / "config.json").read_bytes() == config
    assert (out / "residual" / "log.jsonl").read_bytes() == residual_log
    assert (out / "residual" / "summary.json").read_bytes() == residual_summary
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["residual", "mhc"]
    assert all(s["steps"] == 4 and s["completed"] for s in summary.values())
    assert main(["train", *flags(**CMP), "--connection", "mhc", "--out", str(ref)]) == 0
    assert _losses(out / "mhc") == _losses(ref)


@pytest.mark.parametrize("extra, named", [
    (["--max-steps", "8"], "max_steps: 4 there, 8 now"),
    (["--lr", "1e-3"], "lr: 0.0005 there, 0.001 now"),
    (["--modes", "mhc"], "other modes (residual,mhc there, mhc now)"),
])
def test_compare_resume_refuses_other_settings(flags, tmp_path, capsys, extra, named):
    out = tmp_path / "cmp"
    assert main(["compare", *flags(**CMP), "--modes", "residual,mhc", "--out", str(out),
                 "--no-report"]) == 0
    config, summary = (out / "config.json").read_bytes(), (out / "summary.json").read_bytes()
    capsys.readouterr()
    assert main(["compare", "--out", str(out), "--resume", "--no-report", *extra]) == 2
    assert named in _one_line_error(capsys, "compare")
    assert (out / "config.json").read_bytes() == config
    assert (out / "summary.json").read_bytes() == summary


def test_compare_resume_states_a_runtime_change(flags, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", *flags(**CMP), "--modes", "mhc", "--out", str(out),
                 "--no-report"]) == 0
    config = (out / "config.json").read_bytes()
    capsys.readouterr()
    assert main(["compare", "--out", str(out), "--resume", "--no-report", "--backend",
                 "torch"]) == 0
    said = capsys.readouterr().out
    assert "changed for its unfinished modes: backend 'auto' -> 'torch'" in said
    assert "mhc: already finished, skipped" in said
    assert (out / "config.json").read_bytes() == config


def test_compare_seeds_resume_takes_seeds_and_matching_from_the_study(flags, tmp_path,
                                                                      monkeypatch, capsys):
    """`mhc compare --out DIR --resume` alone on an interrupted multi-seed, parameter-matched
    comparison: same seeds and matching, finished runs skipped, config.json kept; other
    seeds or matching are refused."""
    out = tmp_path / "seeds"
    args = ["compare", *flags(**CMP), "--modes", "residual,mhc", "--seeds", "2",
            "--match-params", "width", "--out", str(out), "--no-report"]
    real = Trainer.train_step

    def train_step(self, s):  # Ctrl-C in the second seed's mhc run
        if s == 3 and self.cfg.connection == "mhc" and self.cfg.seed == 1338:
            raise KeyboardInterrupt
        return real(self, s)
    monkeypatch.setattr(Trainer, "train_step", train_step)
    assert main(args) == 130
    monkeypatch.setattr(Trainer, "train_step", real)
    config = (out / "config.json").read_bytes()
    assert json.loads(config)["seeds"] == [1337, 1338]
    capsys.readouterr()
    assert main(["compare", "--out", str(out), "--resume", "--no-report"]) == 0
    said = capsys.readouterr().out
    assert said.count("already finished, skipped") == 3 and "mean over 2 seeds" in said
    assert (out / "config.json").read_bytes() == config
    summary = json.loads((out / "summary.json").read_text())
    for seed, s in summary["per_seed"].items():
        assert s["mhc"]["steps"] == 4 and s["mhc"]["completed"] and s["residual"]["completed"]
        residual = _records(out / f"seed-{seed}" / "residual", "config")[-1]["config"]
        assert residual["d_model"] > 32 and residual["seed"] == int(seed)  # still widened
    resumed = _records(out / "seed-1338" / "mhc", "config")
    assert len(resumed) == 2 and resumed[-1]["config"]["seed"] == 1338  # continued, not redone
    for extra, named in ((["--seeds", "3"], "other seeds"),
                         (["--match-params", "depth"], "other parameter matching"),
                         (["--seeds", "1"], "comparison over 2 seeds")):
        assert main(["compare", "--out", str(out), "--resume", "--no-report", *extra]) == 2
        assert named in _one_line_error(capsys, "compare")
    assert (out / "config.json").read_bytes() == config
