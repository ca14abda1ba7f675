import json
import os
import subprocess
import sys

import pytest

from torch_mhc.train.cli import main

SUMMARY_FIELDS = ("final_train_loss", "final_val_loss", "max_composite_forward_gain",
                  "max_composite_backward_gain", "grad_ratio_deepest_to_shallowest",
                  "diverged", "tokens_per_s", "peak_memory_mb")
PLOTS = ("loss", "gain_vs_layer", "gain_over_steps", "grad_norm_vs_layer",
         "grad_norm_over_steps", "hres_heatmaps", "step_stats")


def _err(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_compare_end_to_end(flags, tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = main(["compare", *flags(max_steps=4, n_layer=2), "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["residual", "hc", "mhc"]
    for mode, s in summary.items():
        for k in SUMMARY_FIELDS:
            assert k in s, (mode, k)
        assert s["mode"] == mode and s["diverged"] is False and s["steps"] == 4
        assert s["final_train_loss"] > 0 and s["tokens_per_s"] > 0 and s["peak_memory_mb"] > 0
        assert (out / mode / "log.jsonl").is_file()
    assert summary["residual"]["max_composite_forward_gain"] == 1.0
    assert summary["mhc"]["max_composite_forward_gain"] == pytest.approx(1.0, abs=1e-5)
    for name in PLOTS:
        png = out / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(PLOTS)
    assert "max composite forward gain" in html and "seq_len" in html
    table = capsys.readouterr().out
    assert "residual" in table and "report.html" in table

    # mhc report rebuilds everything from the logs alone
    for name in PLOTS:
        (out / "plots" / f"{name}.png").unlink()
    (out / "report.html").unlink()
    (out / "summary.json").unlink()
    assert main(["report", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text()) == summary
    assert all((out / "plots" / f"{n}.png").is_file() for n in PLOTS)
    assert (out / "report.html").is_file()

    # refuses to overwrite, resumes (all finished: nothing to do), overwrites on request
    assert main(["compare", *flags(max_steps=4, n_layer=2), "--out", str(out)]) == 2
    assert "already holds a comparison" in _err(capsys)
    assert main(["compare", *flags(max_steps=4, n_layer=2), "--out", str(out),
                 "--resume", "--no-report"]) == 0
    assert "already finished" in capsys.readouterr().out


def test_train_then_report_single_run(flags, tmp_path, capsys):
    out = tmp_path / "one"
    assert main(["train", *flags(max_steps=3), "--connection", "hc", "--out",
                 str(out)]) == 0
    assert "mhc report" in capsys.readouterr().out
    assert main(["report", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["mode"] == "hc"
    assert (out / "plots" / "hres_heatmaps.png").is_file()
    # continue the same run to more steps: --resume PATH without --out writes there,
    # a bare --resume continues the run in --out
    assert main(["train", *flags(max_steps=5), "--connection", "hc",
                 "--resume", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 5
    assert main(["train", *flags(max_steps=6), "--connection", "hc", "--out", str(out),
                 "--resume", "--dtype", "fp32"]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 6


@pytest.mark.parametrize("args, phrase", [
    (["--data", "/no/such/corpus.txt"], "does not exist"),
    (["--data", "{empty}"], "is empty"),
    (["--seq-len", "4000", "--data", "{short}"], "sequence length 4000 is longer than the data"),
    (["--config", "{badpreset}"], "unknown preset 'enormous'"),
    (["--out", "{file}"], "is an existing file"),
    (["--resume", "{nothing}"], "does not exist"),
    (["--n-head", "3"], "not divisible"),
    (["--backend", "triton"], "--backend triton needs"),  # --device cpu: no CUDA
])
def test_train_bad_input(flags, tmp_path, capsys, monkeypatch, args, phrase):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.txt").write_text("just a few words")
    (tmp_path / "bad.toml").write_text('preset = "enormous"\n')
    (tmp_path / "afile").write_text("x")
    subst = {"{empty}": str(tmp_path / "empty.txt"), "{short}": str(tmp_path / "short.txt"),
             "{badpreset}": str(tmp_path / "bad.toml"), "{file}": str(tmp_path / "afile"),
             "{nothing}": str(tmp_path / "nothing")}
    args = [subst.get(a, a) for a in args]
    base = flags()
    if "--out" not in args:
        base += ["--out", str(tmp_path / "run")]
    rc = main(["train", *base, *args])
    assert rc == 2
    err = _err(capsys)
    assert phrase in err and err.startswith("mhc train: error:")
    assert err.count("\n") == 1  # one line


def test_unknown_preset_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--preset", "enormous"])
    assert e.value.code == 2
    err = _err(capsys)
    assert "invalid choice: 'enormous'" in err and "tiny" in err


def test_resume_with_different_config_message(flags, tmp_path, capsys):
    out = str(tmp_path / "r")
    assert main(["train", *flags(max_steps=3), "--out", out]) == 0
    rc = main(["train", *flags(max_steps=3), "--out", out, "--resume", out,
               "--connection", "hc"])
    assert rc == 2
    err = _err(capsys)
    assert "different configuration" in err and "--connection mhc" in err
    assert err.count("\n") == 1  # one line


def test_compare_bad_modes_and_existing_file(tmp_path, capsys):
    assert main(["compare", "--modes", "residual,dense", "--out", str(tmp_path / "x")]) == 2
    assert "unknown mode(s) dense" in _err(capsys)
    (tmp_path / "f").write_text("")
    assert main(["compare", "--out", str(tmp_path / "f")]) == 2
    assert "is an existing file" in _err(capsys)


def test_report_bad_dir(tmp_path, capsys):
    assert main(["report", str(tmp_path / "none")]) == 2
    assert "does not exist" in _err(capsys)
    assert main(["report", str(tmp_path)]) == 2
    assert "no run logs" in _err(capsys)


def test_help_has_examples(capsys):
    for cmd in ("train", "compare", "report"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        text = capsys.readouterr().out
        assert "examples:" in text
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = capsys.readouterr().out
    assert "--modes" in text and "--connection" not in text and "presets" in text


def test_console_script_prints_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([sys.executable, "-m", "torch_mhc.train.cli", "train", "--data",
                        str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "does not exist" in r.stderr


def test_registered_in_top_level_cli():
    pytest.importorskip("torch_mhc.bench", reason="mhc bench not merged yet")
    from torch_mhc.cli import build_parser
    args = build_parser().parse_args(["compare", "--preset", "tiny"])
    assert args.func.__name__ == "run" and args.preset == "tiny"


def test_compare_bad_data_leaves_nothing_behind(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["compare", "--data", str(tmp_path / "missing.txt"), "--out", str(out)]) == 2
    assert "does not exist" in _err(capsys) and not out.exists()


def test_compare_survives_out_of_memory_in_one_mode(flags, tmp_path, monkeypatch):
    import torch

    from torch_mhc.train.trainer import Trainer
    real = Trainer.train_step

    def step(self, s):
        if self.cfg.connection == "hc" and s == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, s)
    monkeypatch.setattr(Trainer, "train_step", step)
    out = tmp_path / "oom"
    assert main(["compare", *flags(max_steps=2), "--out", str(out), "--no-report"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["hc"]["error"] == "out of memory" and not summary["hc"]["completed"]
    assert summary["mhc"]["completed"] and summary["residual"]["error"] is None


def test_compare_resume_refuses_other_settings(flags, tmp_path, capsys):
    """A finished mode is not kept (and config.json not rewritten) under other settings."""
    out = tmp_path / "cmp"
    args = ["compare", *flags(max_steps=2, eval_interval=2, diag_interval=0), "--out", str(out),
            "--modes", "residual,mhc", "--no-report"]
    assert main(args) == 0
    config = (out / "config.json").read_text()
    summary = (out / "summary.json").read_text()
    capsys.readouterr()
    assert main([*args, "--resume", "--d-model", "64"]) == 2
    err = _err(capsys)
    assert "d_model: 32 there, 64 now" in err and "--overwrite" in err
    assert (out / "config.json").read_text() == config
    assert (out / "summary.json").read_text() == summary
    assert main([*args, "--resume"]) == 0  # same settings: finished modes are skipped
