"""The examples run as their docstrings say (the eager path; the compiled paths are the
trainer's, tested in tests/train and tests/models)."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_compiled_training_loop_runs_and_learns():
    res = subprocess.run([sys.executable, str(ROOT / "examples" / "compiled_training_loop.py"),
                          "--scope", "none", "--steps", "4", "--accum", "2"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    losses = [float(x) for x in re.findall(r"step \d+: loss ([0-9.]+)", res.stdout)]
    assert len(losses) == 4 and losses[-1] < losses[0]
