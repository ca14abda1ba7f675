"""``mhc bench`` rejects bad arguments up front, with a message and exit code 2."""
import pytest

from torch_mhc.cli import main

FAST = ["bench", "--suite", "layer", "--preset", "tiny", "--device", "cpu", "--steps", "1",
        "--warmup", "0", "--variants", "residual", "--seq", "8"]


@pytest.mark.parametrize("extra, phrase", [
    (["--n", "0"], "--n must be >= 1"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--variants", "residual,foo"], "unknown variant(s) foo"),
    (["--preset", "nope"], "unknown --preset 'nope'"),
    (["--device", "bogus"], "unknown --device 'bogus'"),
    (["--out", "{dir}"], "is a folder"),
    (["--out", "{file}/x.json"], "cannot create the folder"),
    (["--cuda-graph"], "--cuda-graph needs a CUDA device"),  # FAST runs on --device cpu
    (["--suite", "kernels", "--interleave"], "--interleave applies to the layer and gpt-small"),
    (["--suite", "kernels", "--compile"], "--compile applies to the layer and gpt-small"),
    (["--compile", "--cuda-graph"], "--compile and --cuda-graph are exclusive"),
    (["--compile-scope", "block"], "--compile-scope needs --compile"),
    (["--compile", "--compile-scope", "block", "--variants", "mhc-triton-recompute"],
     "stream recomputation spans blocks"),
])
def test_bench_bad_arguments(tmp_path, capsys, extra, phrase):
    (tmp_path / "f").write_text("x")
    extra = [a.format(dir=tmp_path, file=tmp_path / "f") for a in extra]
    assert main([*FAST, *extra]) == 2
    captured = capsys.readouterr()
    assert phrase in captured.err and "Traceback" not in captured.err
    assert captured.out == ""  # nothing was measured


def test_bench_cuda_without_cuda(capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main([*FAST, "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_bench_writes_json(tmp_path, capsys):
    out = tmp_path / "sub" / "b.json"
    assert main([*FAST, "--out", str(out)]) == 0
    assert '"suite": "layer"' in out.read_text()


@pytest.mark.parametrize("scope", ["model", "block"])
def test_bench_compiled(tmp_path, scope):
    """``--compile``: the variants' models run through torch.compile (whole, or block by
    block); the JSON says so, and says where the warm-up's compile time went."""
    import json
    out = tmp_path / "c.json"
    assert main([*FAST, "--compile", "--compile-scope", scope, "--warmup", "1",
                 "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["compiled"] is True and res["config"]["compile"] == "default"
    assert res["config"]["compile_scope"] == scope
    v = res["variants"]["residual"]
    assert v["median_ms"] > 0
    phases = v["compile_phases_s"]
    assert 0 < len(phases) <= 10 and all(s > 0 for s in phases.values())


def test_bench_interleaved_rounds(tmp_path):
    """--interleave times the variants in rotated rounds: every variant gets --steps step
    times, and the mHC variant a paired overhead (median of per-round ratios)."""
    import json
    out = tmp_path / "i.json"
    args = list(FAST)
    args[args.index("--variants") + 1] = "residual,mhc-torch"
    args[args.index("--steps") + 1] = "3"
    assert main([*args, "--interleave", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["config"]["interleave"] is True
    for v in ("residual", "mhc-torch"):
        assert len(res["variants"][v]["times_ms"]) == 3
    mhc = res["variants"]["mhc-torch"]
    ratios = sorted(a / b for a, b in zip(mhc["times_ms"], res["variants"]["residual"]["times_ms"]))
    assert abs(mhc["paired_overhead_pct"] - 100 * (ratios[1] - 1)) < 1e-9
    # the top level reports mhc-triton where it ran, else the first other variant
    assert res["overhead_of"] == "mhc-torch"
    assert res["paired_overhead_pct"] == mhc["paired_overhead_pct"]
    assert res["overhead_pct"] == mhc["overhead_pct"]


def test_interrupted_bench_keeps_what_it_measured(tmp_path, monkeypatch):
    """The JSON is rewritten after each variant: a run stopped in its second variant leaves
    the first one's timings, marked partial; a finished run's JSON is not partial."""
    import json

    from torch_mhc import bench
    out = tmp_path / "b.json"
    args = [*FAST, "--out", str(out)]
    args[args.index("--variants") + 1] = "residual,mhc-torch"
    real = bench._time_model

    def stop_in_second(preset, variant, *a):
        if variant == "mhc-torch":
            raise KeyboardInterrupt
        return real(preset, variant, *a)
    monkeypatch.setattr(bench, "_time_model", stop_in_second)
    with pytest.raises(KeyboardInterrupt):
        main(args)
    partial = json.loads(out.read_text())
    assert partial["partial"] is True and list(partial["variants"]) == ["residual"]
    assert len(partial["variants"]["residual"]["times_ms"]) == 1
    monkeypatch.setattr(bench, "_time_model", real)
    assert main(args) == 0
    done = json.loads(out.read_text())
    assert "partial" not in done and set(done["variants"]) == {"residual", "mhc-torch"}


def test_bench_without_a_gpu_needs_device_cpu(capsys, monkeypatch):
    """No CUDA and no --device: refused at once (GPU-sized suites would run for minutes
    on the CPU without a word), one line, exit 2."""
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main(["bench", "--suite", "layer"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("mhc bench: error: no CUDA device")
    assert "--device cpu" in captured.err and captured.err.count("\n") == 1
    assert captured.out == ""


def test_bench_says_what_it_is_doing_first(capsys, monkeypatch):
    from torch_mhc import bench
    seen = {}

    def fake(args, save=None):  # what was on stderr when the timing started
        seen["err"] = capsys.readouterr().err
        return {"suite": args.suite}
    monkeypatch.setattr(bench, "run_bench", fake)
    assert main(FAST) == 0
    line = seen["err"]
    assert line.startswith("mhc bench: layer suite on cpu: preset tiny") and "seq 8" in line
    assert "Triton variants are skipped" in line and line.count("\n") == 1


def test_bench_help_is_formatted_like_the_other_commands(capsys):
    import re
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = capsys.readouterr().out
    assert "``" not in text and "examples:" in text and "--device cpu" in text
    options = text[text.index("options:"):text.index("suites (--suite):")]
    # every option has help, and every option with a default says it
    entries = re.split(r"\n  (?=-)", options)[1:]
    assert len(entries) >= 16
    for entry in entries:
        flag = entry.split()[0]
        assert len(entry.split()) > 2, flag
        if not any(k in entry for k in ("--interleave", "--cuda-graph", "--help")):
            assert "(default:" in " ".join(entry.split()), flag


def test_commit_marks_a_tree_that_differs_from_head(monkeypatch):
    """Results name the commit measured: HEAD, flagged ``+modified`` when tracked files
    differ from it; ``MHC_COMMIT`` wins."""
    import subprocess
    import types

    from torch_mhc import bench
    status = {"out": ""}

    def fake_run(cmd, **kw):
        out = "abc1234def" if cmd[1] == "rev-parse" else status["out"]
        return types.SimpleNamespace(stdout=out + "\n")

    monkeypatch.delenv("MHC_COMMIT", raising=False)
    monkeypatch.setattr(subprocess, "run", fake_run)
    assert bench._commit() == "abc1234def"
    status["out"] = " M src/torch_mhc/bench.py"
    assert bench._commit() == "abc1234def+modified"
    monkeypatch.setenv("MHC_COMMIT", "5a9b091")
    assert bench._commit() == "5a9b091"
