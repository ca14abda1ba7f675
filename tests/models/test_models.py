import pytest
import torch

from torch_mhc.models import GPT, DeepStack, DeepStackConfig, GPTConfig, gpt_config

SMALL = dict(vocab_size=64, seq_len=16, n_layer=2, n_head=2, d_model=32)


def _copy_shared_weights(src, dst):
    """Load every parameter the residual model has into the mHC/HC model (the branches)."""
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    assert not unexpected
    assert all(k.endswith((".fn", ".base", ".scale", ".theta", ".alpha", ".bias")) for k in missing)


@pytest.mark.parametrize("mode", ["mhc", "hc"])
@pytest.mark.parametrize("n", [2, 4])
def test_fresh_gpt_equals_its_residual_twin(mode, n):
    idx = torch.randint(0, 64, (3, 16))
    res = GPT(GPTConfig(**SMALL, connection="residual"))
    other = GPT(GPTConfig(**SMALL, connection=mode, n=n))
    _copy_shared_weights(res, other)
    with torch.no_grad():
        a, b = res(idx)[0], other(idx)[0]
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["mhc", "hc"])
def test_fresh_deep_stack_equals_its_residual_twin(mode):
    cfg = dict(vocab_size=32, depth=12, width=24)
    idx = torch.randint(0, 32, (2, 8))
    res = DeepStack(DeepStackConfig(**cfg, connection="residual"))
    other = DeepStack(DeepStackConfig(**cfg, connection=mode, n=4))
    _copy_shared_weights(res, other)
    with torch.no_grad():
        assert torch.allclose(res(idx)[0], other(idx)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode,n", [("residual", 1), ("hc", 2), ("hc", 4), ("mhc", 1), ("mhc", 2), ("mhc", 4)])
def test_gpt_forward_backward(mode, n):
    model = GPT(GPTConfig(**SMALL, connection=mode, n=n))
    idx = torch.randint(0, 64, (2, 16))
    logits, loss = model(idx, idx)
    assert logits.shape == (2, 16, 64) and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert len(model.connections()) == 4


def test_gpt_rejects_too_long_sequences_and_bad_heads():
    with pytest.raises(ValueError, match="seq_len"):
        GPT(GPTConfig(**SMALL))(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(d_model=30, n_head=4)
    with pytest.raises(ValueError, match="unknown GPT preset"):
        gpt_config("huge")


def test_presets_sizes():
    assert 0.5e6 < GPT(gpt_config("tiny", connection="residual")).num_parameters() < 1.5e6
    cfg = gpt_config("1b")
    blocks = cfg.n_layer * (4 * cfg.d_model ** 2 + 3 * cfg.d_model * cfg.mlp_hidden)
    assert 0.8e9 < blocks + cfg.vocab_size * cfg.d_model < 1.3e9


@pytest.mark.parametrize("mode", ["residual", "hc", "mhc"])
def test_tiny_batch_overfits_in_200_steps(mode):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SMALL, connection=mode, n=4))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    idx = torch.randint(0, 64, (4, 16))
    x, y = idx[:, :-1], idx[:, 1:]
    first = None
    for _ in range(200):
        loss = model(x, y)[1]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 3.5 and loss.item() < 0.1, (first, loss.item())


@pytest.mark.parametrize("mode", ["residual", "hc", "mhc"])
def test_deep_stack_forward_backward(mode):
    model = DeepStack(DeepStackConfig(vocab_size=32, depth=10, width=16, connection=mode))
    idx = torch.randint(0, 32, (2, 8))
    _, loss = model(idx, idx)
    loss.backward()
    assert torch.isfinite(loss) and len(model.connections()) == 10
    assert model.embed.weight.grad.abs().sum() > 0
