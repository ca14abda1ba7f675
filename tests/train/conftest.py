import pytest

SMALL = dict(n_layer=1, d_model=32, n_head=2, seq_len=16, batch_size=2, max_steps=6,
             warmup_steps=2, eval_interval=3, eval_batches=2, diag_interval=2,
             probe_batch_size=2, ckpt_interval=3, progress=False, tensorboard=False,
             device="cpu")


@pytest.fixture
def small():
    """Settings for a training run that takes about a second on a CPU."""
    def make(tmp_path, **kw):
        return {**SMALL, "out": str(tmp_path / "run"), **kw}
    return make


@pytest.fixture
def flags():
    """The same settings as command-line flags: ``flags(max_steps=3)``."""
    def make(**kw):
        out = []
        for k, v in {**SMALL, **kw}.items():
            name = k.replace("_", "-")
            if isinstance(v, bool):
                out.append(f"--{name}" if v else f"--no-{name}")
            else:
                out += [f"--{name}", str(v)]
        return out
    return make
