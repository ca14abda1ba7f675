"""Packaging: a lean core (torch + safetensors), the extras, the wheel's metadata and files."""
import email.parser
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

import torch_mhc

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """Build the wheel from a copy of the sources (no network, no build isolation)."""
    pytest.importorskip("setuptools", minversion="77")
    src = tmp_path_factory.mktemp("sdist")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = subprocess.run(
        [sys.executable, "-c", "from setuptools import build_meta as b; print(b.build_wheel('dist'))"],
        cwd=src, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return src / "dist" / out.stdout.strip().splitlines()[-1]


def test_wheel_metadata_and_files(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(z.read(info).decode())
    assert meta["Name"] == "torch-mhc" and meta["Version"] == torch_mhc.__version__
    requires = meta.get_all("Requires-Dist")
    core = sorted(r.split(";")[0].split(">")[0].strip() for r in requires if "extra ==" not in r)
    assert core == ["safetensors", "torch"]
    train = {r.split(";")[0].strip() for r in requires if 'extra == "train"' in r}
    assert {"numpy", "matplotlib", "tqdm"} <= train
    assert any(r.startswith("torch-mhc[") and "train" in r and 'extra == "dev"' in r
               for r in requires), "dev must bring the train extra (README's set-up command)"
    assert meta["License-Expression"] == "MIT AND CC-BY-SA-3.0"
    assert set(meta.get_all("License-File")) == {"LICENSE", "src/torch_mhc/data/corpora/README.md"}
    assert "Typing :: Typed" in meta.get_all("Classifier")
    assert meta.get_all("Project-URL")
    dist = info.rsplit("/", 1)[0]
    for f in ("torch_mhc/py.typed", "torch_mhc/data/corpora/README.md",
              "torch_mhc/data/corpora/wikitext2-valid.txt", f"{dist}/licenses/LICENSE",
              f"{dist}/licenses/src/torch_mhc/data/corpora/README.md"):
        assert f in names, f


def test_repository_files():
    assert (ROOT / "src" / "torch_mhc" / "py.typed").is_file()
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert f"## {torch_mhc.__version__}" in (ROOT / "CHANGELOG.md").read_text()
    corpora = (ROOT / "src" / "torch_mhc" / "data" / "corpora" / "README.md").read_text()
    assert "CC BY-SA 3.0" in corpora and "creativecommons.org/licenses/by-sa/3.0" in corpora


LEAN = textwrap.dedent("""
    import io, sys, contextlib
    import torch  # may import numpy itself when present; torch_mhc must not need it
    for name in ("numpy", "tqdm", "matplotlib"):
        for m in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[m]
        sys.modules[name] = None  # `import name` now fails
    import torch_mhc, torch_mhc.nn, torch_mhc.ops, torch_mhc.models, torch_mhc.diagnostics
    import torch_mhc.integrations.transformers, torch_mhc.bench, torch_mhc.testing
    from torch_mhc.models import GPT, GPTConfig
    x = torch.randint(0, 64, (2, 8))
    logits, loss = GPT(GPTConfig(vocab_size=64, seq_len=8, n_layer=1, d_model=32))(x, x)
    loss.backward()
    try:
        import torch_mhc.train
    except ImportError as e:
        print("TRAIN:", e)
    from torch_mhc.cli import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["train", "--max-steps", "1"])
    print("RC:", rc)
    print("STDERR:", err.getvalue().strip())
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
        main(["--help"])
    print("HELP:", " ".join(out.getvalue().split()))
""")


def test_core_works_without_the_train_extra():
    out = subprocess.run([sys.executable, "-c", LEAN], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line)
    need = "needs numpy, tqdm, matplotlib"
    assert need in lines["TRAIN"] and "pip install 'torch-mhc[train]'" in lines["TRAIN"]
    assert lines["RC"] == "2"
    stderr = lines["STDERR"]
    assert "\n" not in stderr and stderr.startswith("mhc train: error: the trainer")
    assert need in stderr and "pip install 'torch-mhc[train]'" in stderr
    assert "bench" in lines["HELP"] and "unavailable" in lines["HELP"]
