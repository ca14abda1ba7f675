import pytest
import torch

from torch_mhc.testing import triton_interpreter


@pytest.fixture(autouse=True, scope="module")
def _triton_interpreter(request):
    """The Triton test modules (``*_triton.py``) run the kernels in Triton's CPU interpreter
    when no GPU is present, and compiled on the GPU otherwise."""
    on = request.module.__name__.endswith("_triton") and not torch.cuda.is_available()
    with triton_interpreter(enabled=on):
        yield
