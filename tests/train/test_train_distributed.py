"""torchrun with gloo on CPU: DDP and FSDP2 runs equal a single process on the same global
batch, and a checkpoint written by 2 ranks resumes on 1 rank with the same losses."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch.distributed as dist

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

ARGS = ["--n-layer", "2", "--d-model", "32", "--n-head", "2", "--seq-len", "32",
        "--batch-size", "4", "--max-steps", "4", "--eval-interval", "2", "--eval-batches", "1",
        "--diag-interval", "2", "--ckpt-interval", "2", "--device", "cpu", "--no-progress",
        "--no-tensorboard"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(out, *extra, nproc=0):
    cmd = [sys.executable, "-m", "torch_mhc.cli", "train", *ARGS, "--out", str(out), *extra]
    if nproc:
        cmd[1:3] = ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                    "--master_addr", "127.0.0.1", "--master_port", str(_port()),
                    "-m", "torch_mhc.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res


def _records(out):
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train = [(r["step"], r["loss"], r["grad_norm"]) for r in rows if r["type"] == "train"]
    val = [(r["step"], r["val_loss"]) for r in rows if r["type"] == "eval"]
    diag = [r["grad_param"] for r in rows if r["type"] == "diag"]
    return train, val, diag


def _close(a, b, rel=1e-5):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x == pytest.approx(y, rel=rel, abs=1e-7)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    _run(out)
    return out


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_ranks_match_one_process(single, tmp_path, parallel):
    out = tmp_path / parallel
    _run(out, "--parallel", parallel, nproc=2)
    (t1, v1, d1), (t2, v2, d2) = _records(single), _records(out)
    assert [s for s, *_ in t2] == [1, 2, 3, 4]
    _close(t2, t1)
    _close(v2, v1)
    for a, b in zip(d2, d1):
        _close(a, b)
    header = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert header["world_size"] == 2 and header["config"]["parallel"] == parallel
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002",
                                                                       "step_00000004"]


def test_fsdp_with_blocks_compiled_one_by_one(tmp_path):
    # bf16: the branches are FSDP2 units of their own inside each compiled block, whose
    # hooks PyTorch runs outside Dynamo (graph breaks); against the same run eager
    bf16 = ("--parallel", "fsdp", "--dtype", "bfloat16")
    _run(tmp_path / "eager", *bf16, nproc=2)
    _run(tmp_path / "block", *bf16, "--compile", "--compile-scope", "block", nproc=2)
    (t1, v1, _), (t2, v2, _) = _records(tmp_path / "eager"), _records(tmp_path / "block")
    assert [s for s, *_ in t2] == [1, 2, 3, 4]
    _close(t2, t1, rel=2e-3)
    _close(v2, v1, rel=2e-3)


def test_checkpoint_of_two_fsdp_ranks_resumes_on_one(single, tmp_path):
    two = tmp_path / "two"
    _run(two, "--parallel", "fsdp", nproc=2)
    one = tmp_path / "one"  # the checkpoint's settings, but in one plain process
    res = _run(one, "--resume", str(two / "checkpoints" / "step_00000002"), "--parallel", "none")
    assert "changed since the checkpoint: parallel 'fsdp' -> 'none'" in res.stdout
    _close(_records(one)[0], _records(single)[0])
    _close(_records(one)[1], _records(single)[1])
