"""The fused kernels run only on the Triton releases they are tested with (``TRITON_TESTED``):
another version gives one warning, ``backend="auto"`` runs the PyTorch path and
``backend="triton"`` is an error naming the range. And running the kernels in Triton's CPU
interpreter leaves ``triton.language`` as it was, so the process can still compile them."""
import importlib
import types
import warnings

import pytest
import torch

triton = pytest.importorskip("triton")

from torch_mhc.ops import pre_mix  # noqa: E402
from torch_mhc.ops.coefficients import mhc_coefficients  # noqa: E402
from torch_mhc.testing import triton_interpreter  # noqa: E402

_backend = importlib.import_module("torch_mhc.ops._backend")
CUDA_LIKE = types.SimpleNamespace(is_cuda=True)  # resolve_backend reads only .is_cuda


@pytest.fixture
def fresh(monkeypatch):
    """``triton_available()`` decides again (its answer is cached per process)."""
    monkeypatch.setattr(_backend, "_TRITON_OK", None)
    monkeypatch.setattr(_backend, "_TRITON_WHY", _backend._TRITON_WHY)
    monkeypatch.delenv("TORCH_MHC_UNTESTED_TRITON", raising=False)
    return monkeypatch


@pytest.mark.parametrize("version,ok", [
    ("3.3.1", False), ("3.4.0", True), ("3.8.0", True), ("3.9.0+git1a2b3c", True),
    ("3.10.0", False), ("4.0.0", False), ("2.3.1", False), ("nightly", False)])
def test_version_range(fresh, version, ok):
    assert _backend.triton_version_ok(version) is ok
    fresh.setenv("TORCH_MHC_UNTESTED_TRITON", "1")
    assert _backend.triton_version_ok(version)


def test_untested_triton_warns_once_and_falls_back(fresh):
    fresh.setattr(triton, "__version__", "3.10.0")
    with pytest.warns(UserWarning, match=r"Triton 3\.10\.0 is outside the tested range "
                                         r">=3\.4,<3\.10.*PyTorch path"):
        assert not _backend.triton_available()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise here
        assert not _backend.triton_available()
        assert _backend.resolve_backend("auto", CUDA_LIKE) == "torch"
        with triton_interpreter():
            x = torch.randn(3, 4, 16)
            assert _backend.kernel_impl(x) == "torch"  # the fused ops' PyTorch twins
            with pytest.raises(RuntimeError, match=r"backend='triton' needs a tested Triton "
                                                   r"\(>=3\.4,<3\.10\), found 3\.10\.0"):
                pre_mix(x, torch.rand(3, 4), backend="triton")
            out = pre_mix(x, torch.rand(3, 4), backend="auto")
            assert out.shape == (3, 16)


def test_tested_triton_is_used(fresh):
    fresh.setattr(triton, "__version__", "3.8.0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _backend.triton_available()
    assert _backend.resolve_backend("auto", CUDA_LIKE) == "triton"
    with triton_interpreter():
        assert _backend.kernel_impl(torch.randn(3, 4, 16)) == "triton"


def test_untested_triton_on_request(fresh):
    fresh.setattr(triton, "__version__", "3.10.0")
    fresh.setenv("TORCH_MHC_UNTESTED_TRITON", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _backend.triton_available()


def _language_state():
    import triton.language as tl
    objs = [tl, tl.core, tl.standard, tl.math, tl.core.tensor, tl.core.dtype]
    return [(obj, dict(vars(obj))) for obj in objs]


def test_interpreter_leaves_triton_language_unchanged():
    """Triton's interpreter rebinds ``triton.language``'s builtins for each device-function
    call (``tl.sum``, the kernels' ``_split_hi_lo``) without restoring them; a GPU compile
    later in the process then fails with ``'ir.value' object has no attribute 'dtype'``."""
    before = _language_state()
    n, C, T = 4, 32, 5
    x = torch.randn(T, n, C).bfloat16().requires_grad_()
    fn = torch.randn((n + 2) * n, n * C) * 0.05
    with triton_interpreter():
        h_pre, h_post, h_res = mhc_coefficients(x, fn, torch.randn((n + 2) * n), torch.rand(3),
                                                backend="triton")
        (h_pre.sum() + h_post.sum() + h_res.square().sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    changed = [f"{getattr(obj, '__name__', obj)}.{k}" for obj, attrs in before
               for k, v in attrs.items() if vars(obj).get(k) is not v]
    added = [f"{obj.__name__}.{k}" for obj, attrs in before if isinstance(obj, type)
             for k in vars(obj) if k not in attrs]  # e.g. tensor.__bool__ (Triton 3.4)
    assert not changed and not added, changed + added
