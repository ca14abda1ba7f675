"""device=/dtype= construction and meta-device initialisation (FSDP2 style) of the layers."""
import pytest
import torch
import torch.distributed as dist
from torch import nn

from torch_mhc import HyperConnection, HyperHead, RMSNorm, expand_streams
from torch_mhc.models import GPT, GPTConfig

DIM, N = 16, 4


class Stack(nn.Module):
    """Connections of every mode around seeded branches, a head and a norm."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(
            HyperConnection(nn.Sequential(RMSNorm(DIM), nn.Linear(DIM, DIM)), DIM, N, mode,
                            layer_index=i, gate_init=0.03 * (i + 1))
            for i, mode in enumerate(["mhc", "hc", "residual", "mhc", "hc"]))
        self.head = HyperHead(DIM, N, gate_init=0.2)
        self.norm = RMSNorm(DIM)

    def forward(self, x):
        s = expand_streams(x, N)
        for layer in self.layers:
            s = layer(s)
        return self.norm(self.head(s))


def _reset_all(model: nn.Module) -> None:
    """Every submodule in construction order (so the seeded branches draw what a normal
    build draws), then the model's own ``reset_parameters`` (GPT: its init on top)."""
    for m in model.modules():
        if m is not model and hasattr(m, "reset_parameters"):
            m.reset_parameters()
    if hasattr(model, "reset_parameters"):
        model.reset_parameters()


def _same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].device.type == "cpu" and sa[k].dtype == sb[k].dtype, k
        assert torch.equal(sa[k], sb[k]), k


def test_meta_then_to_empty_and_reset_equals_a_normal_build():
    torch.manual_seed(3)
    ref = Stack()
    with torch.device("meta"):
        model = Stack()
    assert all(p.is_meta for p in model.parameters())
    model.to_empty(device="cpu")
    torch.manual_seed(3)
    _reset_all(model)
    _same_state(model, ref)
    x = torch.randn(2, 5, DIM)
    assert torch.equal(model(x), ref(x))


def test_reset_parameters_undoes_training():
    torch.manual_seed(0)
    hc = HyperConnection(nn.Linear(DIM, DIM), DIM, N, "mhc", layer_index=2, gate_init=0.05)
    head = HyperHead(DIM, N)
    fresh = {k: v.clone() for k, v in [*hc.state_dict().items(),
                                       *(("h." + k, v) for k, v in head.state_dict().items())]}
    with torch.no_grad():
        for p in [*hc.parameters(), *head.parameters()]:
            p.add_(torch.randn_like(p))
    branch_w = hc.branch.weight.clone()
    hc.reset_parameters()
    head.reset_parameters()
    for k, v in hc.state_dict().items():
        if k.startswith("branch."):
            continue  # the branch is the user's module: left alone
        assert torch.equal(v, fresh[k]), k
    assert torch.equal(hc.branch.weight, branch_w)
    for k, v in head.state_dict().items():
        assert torch.equal(v, fresh["h." + k]), k


@pytest.mark.parametrize("mode", ["mhc", "hc"])
def test_device_and_dtype_keywords(mode):
    hc = HyperConnection(nn.Identity(), DIM, N, mode, layer_index=1, dtype=torch.float64)
    ref = HyperConnection(nn.Identity(), DIM, N, mode, layer_index=1)
    assert {p.dtype for p in hc.parameters()} == {torch.float64}
    for (k, a), (_, b) in zip(hc.named_parameters(), ref.named_parameters()):
        assert torch.allclose(a, b.double(), rtol=0, atol=1e-8), k  # gates: 0.01 in fp64
    meta = HyperConnection(nn.Identity(), DIM, N, mode, device="meta")
    assert all(p.is_meta for p in meta.parameters())
    head = HyperHead(DIM, N, device="meta", dtype=torch.bfloat16)
    assert all(p.is_meta and p.dtype == torch.bfloat16 for p in head.parameters())
    norm = RMSNorm(DIM, dtype=torch.float64)
    assert norm.weight.dtype == torch.float64 and torch.equal(norm.weight, torch.ones(DIM).double())


def test_gpt_on_meta_device():
    cfg = GPTConfig(vocab_size=64, seq_len=16, n_layer=2, d_model=32, n_head=4,
                    connection="mhc", n=4)
    torch.manual_seed(7)
    ref = GPT(cfg)
    with torch.device("meta"):
        model = GPT(cfg)
    model.to_empty(device="cpu")
    torch.manual_seed(7)
    _reset_all(model)
    _same_state(model, ref)
    assert model.head.weight is model.embed.weight  # re-tied after to_empty
    # the RoPE tables are non-persistent buffers (not in the state dict): recomputed too
    assert torch.equal(model.rope_cos, ref.rope_cos) and torch.equal(model.rope_sin, ref.rope_sin)
    idx = torch.randint(0, 64, (2, 16))
    assert torch.equal(model(idx)[0], ref(idx)[0])


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
def test_gpt_on_meta_device_sharded_with_fsdp2(tmp_path):
    """The FSDP2 recipe: build on meta, fully_shard, to_empty, reset (a 1-rank gloo mesh)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    cfg = GPTConfig(vocab_size=64, seq_len=16, n_layer=2, d_model=32, n_head=4,
                    connection="mhc", n=4)
    torch.manual_seed(7)
    ref = GPT(cfg)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        with torch.device("meta"):
            model = GPT(cfg)
        mesh = init_device_mesh("cpu", (1,))
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        model.to_empty(device="cpu")
        torch.manual_seed(7)
        _reset_all(model)
        state = model.state_dict()
        assert type(state["blocks.0.attn.base"]).__name__ == "DTensor"
        for k, v in ref.state_dict().items():
            assert torch.equal(state[k].full_tensor(), v), k
    finally:
        dist.destroy_process_group()
