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
