"""Clear errors when transformers is missing or too old (runs without transformers installed)."""
import sys

import pytest

import torch_mhc.integrations.transformers as hf
from torch_mhc.integrations.transformers import _compat


def test_import_does_not_need_transformers(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # "import transformers" now fails
    assert _compat.transformers_version() is None
    with pytest.raises(hf.TransformersUnavailableError,
                       match=r"upcycle needs Hugging Face transformers >= 5\.0\.0, which is not "
                             r"installed; install the extra: pip install 'torch-mhc\[hf\]'"):
        hf.upcycle(object())
    with pytest.raises(ImportError, match=r"patch_deepseek_v4 needs .* >= 5\.8\.1"):
        hf.patch_deepseek_v4(object())


@pytest.mark.parametrize("found", ["4.57.1", "5.8.0", "5.6.2"])
def test_too_old_for_deepseek_v4(monkeypatch, found):
    monkeypatch.setattr(_compat, "transformers_version", lambda: found)
    with pytest.raises(hf.TransformersUnavailableError,
                       match=rf"needs Hugging Face transformers >= 5\.8\.1, found {found}; .*"
                             r"pip install 'torch-mhc\[hf\]'.*transformers>=5\.8\.1"):
        hf.unpatch_deepseek_v4(object())


def test_too_old_for_upcycle(monkeypatch):
    monkeypatch.setattr(_compat, "transformers_version", lambda: "4.46.0")
    for call in (lambda: hf.upcycle(object()), lambda: hf.load_upcycled("x"),
                 lambda: hf.save_upcycled(object(), "x")):
        with pytest.raises(hf.TransformersUnavailableError, match=r">= 5\.0\.0, found 4\.46\.0"):
            call()


def test_version_parsing():
    assert _compat._parse("5.24.0.dev0") == (5, 24, 0)
    assert _compat._parse("5.8") == (5, 8, 0)
    assert _compat._parse("5.8.1") > _compat._parse("5.8.0")
