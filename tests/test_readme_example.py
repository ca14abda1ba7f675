"""The README's usage example runs as shown and means what it says."""
import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_usage_example_runs():
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Use it in your own model"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 25
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    assert scope["y"].shape == scope["x"].shape
    H_pre, H_post, H_res = scope["H_pre"], scope["H_post"], scope["H_res"]
    assert H_pre.shape == (2, 16, 4) and H_post.shape == (2, 16, 4)
    assert torch.allclose(H_res.sum(-1), torch.ones(2, 16, 4), atol=1e-5)
