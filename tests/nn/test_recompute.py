"""Block recomputation of the streams (``torch_mhc.nn.recompute``, paper Eq. 20): same
gradients, fewer streams kept, each dropped stream recomputed once."""
import gc

import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef

import torch_mhc.nn.modes as modes_module
from torch_mhc.models import GPT, DeepStack, DeepStackConfig, GPTConfig
from torch_mhc.nn import HyperConnection, RMSNorm, expand_streams
from torch_mhc.nn.recompute import (StreamRecompute, current_recompute, optimal_block_size,
                                    resolve_block_size, stream_recompute)
from torch_mhc.testing import triton_interpreter


def _gpt(mode="mhc", backend="torch", dtype=torch.float64, n_layer=4, sinkhorn_iters=5):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=32, seq_len=8, n_layer=n_layer, n_head=2, d_model=16,
                    connection=mode, backend=backend, sinkhorn_iters=sinkhorn_iters)
    model = GPT(cfg).to(dtype)
    with torch.no_grad():  # move off the symmetric init so every mapping matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _batch(model, B=2, T=8):
    g = torch.Generator().manual_seed(1)
    V = model.cfg.vocab_size
    return torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)


def _grads(model, block, idx, tgt, retain=False):
    model.cfg.recompute_block = block
    model.zero_grad(set_to_none=True)
    _, loss = model(idx, tgt)
    loss.backward(retain_graph=retain)
    if retain:
        loss.backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}


def _assert_equal(a, b):
    for k in a:
        assert torch.equal(a[k], b[k]), (k, (a[k] - b[k]).abs().max().item())


# -- block size ---------------------------------------------------------------------------
def test_optimal_block_size_hand_values():
    # f(L_r) = n ceil(L / L_r) + (n + 2) L_r (Eq. 20)
    assert optimal_block_size(4, 8) == 2  # 38, 28, 30, 32, ...
    assert optimal_block_size(4, 24) == 4  # ..., f(3) = 50, f(4) = 48, f(5) = 50
    assert optimal_block_size(4, 60) == 6  # f(5) = 78, f(6) = 76, f(7) = 78
    assert optimal_block_size(1, 8) == 2  # 11, 10, 12
    assert optimal_block_size(4, 1) == 1
    assert optimal_block_size(2, 2) == 1  # 6 vs 2 + 8 = 10
    assert resolve_block_size("auto", 4, 60) == resolve_block_size(-1, 4, 60) == 6
    assert resolve_block_size(0, 4, 60) == 0 and resolve_block_size(3, 4, 60) == 3
    for bad in (-2, 1.5, "3", True):
        with pytest.raises(ValueError):
            resolve_block_size(bad, 4, 8)
    with pytest.raises(ValueError):
        GPTConfig(recompute_block=-3)
    with pytest.raises(ValueError):
        StreamRecompute(0)


# -- gradients ----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["mhc", "hc"])
def test_gpt_gradients_unchanged_torch_float64(mode):
    model = _gpt(mode)
    idx, tgt = _batch(model)
    ref = _grads(model, 0, idx, tgt)
    for block in (1, 2, 3, -1):
        _assert_equal(_grads(model, block, idx, tgt), ref)


def test_deep_stack_gradients_unchanged():
    torch.manual_seed(0)
    model = DeepStack(DeepStackConfig(vocab_size=16, seq_len=4, depth=7, width=16,
                                      backend="torch", sinkhorn_iters=5)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    idx, tgt = _batch(model, T=4)
    ref = _grads(model, 0, idx, tgt)
    for block in (3, -1):
        _assert_equal(_grads(model, block, idx, tgt), ref)


def test_retain_graph_second_backward():
    model = _gpt()
    idx, tgt = _batch(model)
    _assert_equal(_grads(model, 4, idx, tgt, retain=True), _grads(model, 0, idx, tgt, True))


def test_fused_triton_path_gradients_unchanged():
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = _gpt("mhc", "triton", torch.float32, n_layer=2, sinkhorn_iters=3).to(dev)
    idx, tgt = (t.to(dev) for t in _batch(model, B=1, T=4))
    with triton_interpreter(enabled=dev == "cpu"):
        ref = _grads(model, 0, idx, tgt)
        kept = {}
        for block in (2, 3):
            _assert_equal(_grads(model, block, idx, tgt), ref)
            kept[block] = _streams_kept(model, block, idx, tgt)
        kept[0] = _streams_kept(model, 0, idx, tgt)
    assert kept == {0: 3, 2: 1, 3: 1}


def test_double_use_and_one_recompute_per_stream(monkeypatch):
    """A dropped stream saved by several ops (the connection's and an extra product) is
    rebuilt once per backward, from the block boundary."""
    torch.manual_seed(0)
    hcs = [HyperConnection(torch.nn.Sequential(RMSNorm(8), torch.nn.Linear(8, 8)), 8, n=3,
                           layer_index=i, backend="torch").double() for i in range(5)]
    x0 = expand_streams(torch.randn(2, 8, dtype=torch.float64, requires_grad=True), 3)

    def loss_fn():
        x, extra = x0, 0
        for hc in hcs:
            x = hc(x)
            extra = extra + (x * x).sum()  # saves every stream twice more
        return x.square().sum() + extra

    loss = loss_fn()
    loss.backward()
    ref = [p.grad.clone() for hc in hcs for p in hc.parameters()]

    calls = []
    real = modes_module.post_res
    monkeypatch.setattr(modes_module, "post_res", lambda *a, **k: calls.append(1) or real(*a, **k))
    for hc in hcs:
        hc.zero_grad(set_to_none=True)
    with stream_recompute(2) as rc:
        loss = loss_fn()
    assert rc.connections == 5 and len(calls) == 5
    del calls[:]
    loss.backward()
    assert len(calls) == 3  # outputs 1, 3, 5 dropped (2 and 4 close a block)
    got = [p.grad for hc in hcs for p in hc.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(got, ref))


# -- memory --------------------------------------------------------------------------------
def _streams_kept(model, block, idx, tgt):
    """How many connection outputs (the last excepted) the graph keeps alive after forward."""
    model.cfg.recompute_block = block
    refs = []
    hooks = [hc.register_forward_hook(
        lambda m, i, out: refs.append(StorageWeakRef(out.untyped_storage())))
        for hc in model.connections()]
    try:
        _, loss = model(idx, tgt)
    finally:
        for h in hooks:
            h.remove()
    gc.collect()
    kept = sum(not r.expired() for r in refs[:-1])
    del loss
    return kept


def _saved_bytes(model, block, idx, tgt, monkeypatch):
    """Bytes of the distinct storages the pack hooks hand to the graph (handles count 0)."""
    storages = {}

    def record(t):
        if isinstance(t, torch.Tensor):
            s = t.untyped_storage()
            storages[s._cdata] = (StorageWeakRef(s), s.nbytes())
        return t
    pack = StreamRecompute._pack
    with monkeypatch.context() as m:
        m.setattr(StreamRecompute, "_pack", lambda self, t: record(pack(self, t)))
        model.cfg.recompute_block = block
        _, loss = model(idx, tgt)
    total = sum(nb for r, nb in storages.values() if not r.expired())
    del loss
    return total


def test_stream_memory_drops_by_block_factor(monkeypatch):
    model = _gpt(dtype=torch.float32)  # 8 connections
    idx, tgt = _batch(model)
    stream = idx.numel() * model.cfg.n * model.cfg.d_model * 4
    # outputs 1..7 are kept off, and with block b those numbered k * b
    kept = {b: _streams_kept(model, b, idx, tgt) for b in (0, 1, 2, 4)}
    assert kept == {0: 7, 1: 7, 2: 3, 4: 1}  # plus the input: 8 -> ceil(8 / b) streams
    held = {b: _saved_bytes(model, b, idx, tgt, monkeypatch) for b in (1, 2, 4)}
    for b in (2, 4):  # block 1 keeps what no recomputation keeps
        assert held[1] - held[b] == (8 - 8 // b) * stream


def test_no_grad_forward_unaffected():
    model = _gpt()
    idx, _ = _batch(model)
    model.cfg.recompute_block = 0
    with torch.no_grad():
        ref, _ = model(idx)
    with torch.no_grad(), stream_recompute(2) as rc:
        for b in model.blocks:
            b(expand_streams(model.embed(idx), 4), model.rope_cos, model.rope_sin)
        assert rc.connections == 0 and not rc._entries
    model.cfg.recompute_block = 2
    with torch.no_grad():
        out, _ = model(idx)
    assert torch.equal(out, ref)
    assert current_recompute() is None
