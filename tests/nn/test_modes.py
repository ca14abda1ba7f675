"""The connection-mode registry (``torch_mhc.nn.modes``): the built-in modes as the table
says, and a new mode registered in one place working in the layer, the models and the
trainer's settings."""
import pytest
import torch
from torch import nn

from torch_mhc import HyperConnection, expand_streams
from torch_mhc.models import GPT, DeepStack, DeepStackConfig, GPTConfig
from torch_mhc.nn import MODES, ConnectionMode, connection_mode, register_mode
from torch_mhc.nn.hyper_connection import connection_parameters, no_weight_decay_parameters


# -- a toy mode, defined once: H_pre = softmax(pre), H_post = 1, H_res = res (static) -------
def _toy_parameters(n, dim):
    return {"res": (n, n), "pre": (n,)}


def _toy_reset(hc):
    hc.res.copy_(torch.eye(hc.n))
    hc.pre.zero_()


def _toy_mappings(hc, streams):
    lead, n = streams.shape[:-2], hc.n
    return (torch.softmax(hc.pre.float(), -1).expand(*lead, n),
            torch.ones(*lead, n, device=streams.device),
            hc.res.float().expand(*lead, n, n))


TOY = ConnectionMode("identity-mix", _toy_mappings, _toy_parameters, _toy_reset,
                     no_weight_decay=("res",))


@pytest.fixture
def toy():
    register_mode(TOY)
    yield TOY
    del MODES[TOY.name]


# -- built-in modes ---------------------------------------------------------------------
def test_builtin_modes_table():
    assert list(MODES)[:3] == ["mhc", "hc", "residual"]
    n, dim = 4, 8
    assert MODES["mhc"].parameters(n, dim) == {"fn": (24, 32), "base": (24,), "scale": (3,)}
    assert MODES["hc"].parameters(n, dim) == {"theta": (6, 8), "alpha": (3,), "bias": (24,)}
    assert MODES["residual"].parameters(n, dim) == {}
    assert MODES["mhc"].no_weight_decay == ("base", "scale")
    assert MODES["hc"].no_weight_decay == ("alpha", "bias")
    assert [MODES[m].streams(4) for m in ("mhc", "hc", "residual")] == [4, 4, 1]
    for mode in ("mhc", "hc", "residual"):
        hc = HyperConnection(nn.Linear(dim, dim), dim, n, mode)
        own = [k for k in hc.state_dict() if not k.startswith("branch.")]
        assert own == list(MODES[mode].parameters(n, dim))


def test_builtin_weight_decay_split_is_matrices_only():
    """mHC's fn and HC's theta are decayed (matrices); biases and gates are not."""
    for mode, decayed in (("mhc", {"fn"}), ("hc", {"theta"}), ("residual", set())):
        model = GPT(GPTConfig(vocab_size=32, seq_len=8, n_layer=1, n_head=2, d_model=16,
                              connection=mode))
        ids = {id(p): k.rsplit(".", 1)[-1] for k, p in model.named_parameters()}
        skipped = {ids[id(p)] for p in no_weight_decay_parameters(model)}
        own = {ids[id(p)] for p in connection_parameters(model)}
        assert skipped == own - decayed


# -- unknown modes ------------------------------------------------------------------------
def test_unknown_mode_lists_the_registered_ones():
    msg = "unknown mode 'nope'; registered modes: mhc, hc, residual"
    with pytest.raises(ValueError, match=msg):
        HyperConnection(nn.Identity(), 8, 2, "nope")
    with pytest.raises(ValueError, match=msg):
        connection_mode("nope")
    with pytest.raises(ValueError, match=msg):
        GPT(GPTConfig(vocab_size=32, seq_len=8, n_layer=1, n_head=2, d_model=16,
                      connection="nope"))
    with pytest.raises(ValueError, match=msg):
        DeepStack(DeepStackConfig(vocab_size=32, depth=2, width=8, connection="nope"))


def test_register_mode_checks(toy):
    with pytest.raises(ValueError, match="already registered"):
        register_mode(TOY)
    assert register_mode(TOY, replace=True) is TOY
    with pytest.raises(ValueError, match="not among its parameters"):
        register_mode(ConnectionMode("bad", _toy_mappings, _toy_parameters, _toy_reset,
                                     no_weight_decay=("nonexistent",)))
    with pytest.raises(TypeError):
        register_mode("identity-mix")
    assert "bad" not in MODES


# -- a new mode, registered in one place --------------------------------------------------
def test_new_mode_in_the_layer(toy):
    torch.manual_seed(0)
    hc = HyperConnection(nn.Linear(8, 8), 8, 3, "identity-mix", layer_index=2)
    assert [k for k in hc.state_dict()] == ["res", "pre", "branch.weight", "branch.bias"]
    assert torch.equal(hc.res, torch.eye(3)) and torch.equal(hc.pre, torch.zeros(3))
    assert hc.no_weight_decay() == {"res"}
    with torch.no_grad():  # away from the init, so every mapping matters
        hc.res.add_(0.1 * torch.randn(3, 3))
        hc.pre.normal_()
    x = torch.randn(2, 5, 3, 8, requires_grad=True)
    out = hc(x)
    w = torch.softmax(hc.pre, -1)
    expected = (torch.einsum("ij,btjc->btic", hc.res, x)
                + hc.branch(torch.einsum("j,btjc->btc", w, x)).unsqueeze(-2))
    assert torch.allclose(out, expected, atol=1e-6)
    out.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in hc.parameters())
    h_pre, h_post, h_res = hc.mappings(x.detach())
    assert h_pre.shape == (2, 5, 3) and h_post.shape == (2, 5, 3) and h_res.shape == (2, 5, 3, 3)
    with torch.device("meta"):
        meta = HyperConnection(nn.Linear(8, 8), 8, 3, "identity-mix")
    meta.to_empty(device="cpu")
    meta.reset_parameters()
    assert torch.equal(meta.res, torch.eye(3))


def test_new_mode_in_a_tiny_gpt_end_to_end(toy):
    cfg = dict(vocab_size=32, seq_len=8, n_layer=2, n_head=2, d_model=16)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**cfg, connection="identity-mix", n=2))
    assert model.cfg.streams == 2
    # the GPT init leaves the connection's own matrices alone: res is still the identity
    assert all(torch.equal(hc.res, torch.eye(2)) for hc in model.connections())
    # fresh, it computes what its residual twin computes (H_pre = 1/n, H_post = 1, H_res = I)
    res = GPT(GPTConfig(**cfg, connection="residual"))
    missing, unexpected = model.load_state_dict(res.state_dict(), strict=False)
    assert not unexpected and all(k.endswith((".res", ".pre")) for k in missing)
    idx = torch.randint(0, 32, (2, 8))
    with torch.no_grad():
        assert torch.allclose(model(idx)[0], res(idx)[0], atol=1e-5)
    _, loss = model(idx, idx)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    deep = DeepStack(DeepStackConfig(vocab_size=32, depth=3, width=8, connection="identity-mix",
                                     n=2))
    assert torch.isfinite(deep(idx, idx)[1])


def test_new_mode_stream_count_reaches_the_models():
    one = ConnectionMode("one-stream", TOY.mappings, TOY.parameters, TOY.reset,
                         streams=lambda n: 1)
    register_mode(one)
    try:
        cfg = GPTConfig(vocab_size=32, seq_len=8, n_layer=1, n_head=2, d_model=16,
                        connection="one-stream", n=4)
        assert cfg.streams == 1
        model = GPT(cfg)
        assert all(hc.n == 1 for hc in model.connections())
        assert torch.isfinite(model(torch.randint(0, 32, (1, 8)))[0]).all()
    finally:
        del MODES["one-stream"]


def test_new_mode_in_the_trainer_settings(toy):
    from torch_mhc.train.compare import parse_modes
    from torch_mhc.train.config import ConfigError, resolve_config
    from torch_mhc.train.trainer import build_model, build_optimizer

    cfg, _ = resolve_config({"connection": "identity-mix", "n": 2, "n_layer": 1, "d_model": 16,
                             "n_head": 2, "seq_len": 8})
    assert cfg.streams == 2
    assert parse_modes("residual,identity-mix") == ["residual", "identity-mix"]
    model = build_model(cfg, 32)
    opt = build_optimizer(model, cfg, torch.device("cpu"))
    decay, no_decay = ({id(p) for p in g["params"]} for g in opt.param_groups)
    for hc in model.connections():  # res is a matrix, but its mode keeps it from decay
        assert id(hc.res) in no_decay and id(hc.pre) in no_decay
    assert id(model.blocks[0].attn.branch.qkv.weight) in decay
    with pytest.raises(ConfigError, match="identity-mix"):
        resolve_config({"connection": "nope"})


def test_state_dict_round_trip_through_expand(toy):
    hc = HyperConnection(nn.Linear(4, 4), 4, 2, "identity-mix")
    other = HyperConnection(nn.Linear(4, 4), 4, 2, "identity-mix")
    with torch.no_grad():
        hc.res.mul_(0.5)
    other.load_state_dict(hc.state_dict())
    x = expand_streams(torch.randn(3, 4), 2)
    assert torch.equal(hc(x), other(x))
