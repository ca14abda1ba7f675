import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield



def pytest_terminal_summary(terminalreporter):
    """The versions under test, at the end of the log (CI shows what pip resolved)."""
    from torch_mhc.ops._backend import triton_available
    try:
        import triton
        version = triton.__version__
    except ImportError:
        version = None
    kernels = "on" if triton_available() else "off"
    terminalreporter.write_line(f"torch {torch.__version__}, triton {version} "
                                f"(fused kernels {kernels})")
