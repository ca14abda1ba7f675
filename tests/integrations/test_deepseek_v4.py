"""torch-mhc vs transformers' DeepSeek-V4 mHC (the released convention), on tiny random configs (no downloads)."""
import copy

import pytest
import torch

transformers = pytest.importorskip(
    "transformers", minversion="5.8.1",
    reason="needs transformers >= 5.8.1 (DeepSeek-V4): pip install 'torch-mhc[hf]'")

from transformers import AutoModelForCausalLM, DeepseekV4Config, DeepseekV4ForCausalLM  # noqa: E402
from transformers.models.deepseek_v4.modeling_deepseek_v4 import (  # noqa: E402
    DeepseekV4DecoderLayer, DeepseekV4HyperConnection, DeepseekV4HyperHead)

from torch_mhc import HyperConnection  # noqa: E402
from torch_mhc.integrations.transformers import (  # noqa: E402
    apply_mhc_kernels_to_deepseek_v4, hyper_connections, is_deepseek_v4_patched,
    patch_deepseek_v4, revert_mhc_kernels_to_deepseek_v4, unpatch_deepseek_v4)
from torch_mhc.nn.hyper_head import HyperHead  # noqa: E402

N = 4


def tiny_config(hc_mult=N, layers=4):
    """All three attention types and both MoE types, a few small experts."""
    kinds = ["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention",
             "compressed_sparse_attention"][:layers]
    return DeepseekV4Config(
        vocab_size=128, hidden_size=64, moe_intermediate_size=32, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=1, head_dim=32, q_lora_rank=32,
        num_experts_per_tok=2, n_routed_experts=4, n_shared_experts=1, hc_mult=hc_mult,
        sliding_window=8, o_groups=2, o_lora_rank=16, index_n_heads=2, index_head_dim=16,
        index_topk=4, max_position_embeddings=256, layer_types=kinds,
        compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 8},
        mlp_layer_types=(["hash_moe"] + ["moe"] * (layers - 1)))


def randomise(model):
    """Random mHC parameters (far from init) and a hash-routing table that uses the gate."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("hc.base", "hc_base")):
                p.normal_(0, 1)
            elif name.endswith(("hc.scale", "hc_scale")):
                p.uniform_(0.5, 2.0)
            elif name.endswith(("hc.fn", "hc_fn")):
                p.normal_(0, 0.5)
        for name, b in model.named_buffers():
            if name.endswith("tid2eid"):
                experts = model.config.n_routed_experts
                b.copy_(torch.stack([torch.randperm(experts)[:b.shape[1]] for _ in range(b.shape[0])]))
    return model


def make_model(dtype=torch.float32, **kw):
    torch.manual_seed(0)
    model = randomise(DeepseekV4ForCausalLM(tiny_config(**kw)).to(dtype))
    if dtype == torch.float64:
        model.config._experts_implementation = "eager"  # grouped_mm has no float64
    return model


def step(model, ids):
    model.zero_grad(set_to_none=True)
    out = model(ids, labels=ids, use_cache=False)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), grads


def _checkpointing(model, on):
    """transformers 5.x renamed gradient_checkpointing_* to activation_checkpointing_*."""
    name = "activation" if hasattr(model, "activation_checkpointing_enable") else "gradient"
    getattr(model, f"{name}_checkpointing_{'enable' if on else 'disable'}")()


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(1))


def test_patch_same_logits_and_gradients_fp32(ids):
    model = make_model()
    ref64 = make_model(torch.float64)
    _, g64 = step(ref64, ids)  # transformers' own fp32 rounding error, per parameter
    logits0, g0 = step(model, ids)
    params0 = dict(model.named_parameters())
    keys0 = list(model.state_dict())
    assert patch_deepseek_v4(model) is model
    logits1, g1 = step(model, ids)

    assert rel(logits1, logits0) < 1e-5
    assert g1.keys() == g0.keys() and len(g0) > 100  # (a few compressor weights get none here)
    all0 = torch.cat([g.flatten() for g in g0.values()])
    all1 = torch.cat([g1[k].flatten() for k in g0])
    assert rel(all1, all0) < 1e-4
    for k in g0:
        # 1e-4 relative, or within twice transformers' own fp32 error on that tensor: a few
        # 3-element `scale` gradients are sums over all tokens with cancellation, where
        # transformers' fp32 itself is ~1e-4 away from float64 (ours is as close or closer).
        own = (g0[k].double() - g64[k]).norm().item()
        assert (g1[k].double() - g0[k].double()).norm().item() <= \
            1e-4 * g0[k].double().norm().item() + 2 * own, k
    # the same parameter objects under the same keys
    assert list(model.state_dict()) == keys0
    assert all(params0[n] is p for n, p in model.named_parameters())
    # the sites are torch-mhc modules
    for layer in model.model.layers:
        assert isinstance(layer, DeepseekV4DecoderLayer)
        assert type(layer).__name__ == "MhcDeepseekV4DecoderLayer"
        for site in (layer.attn_hc, layer.ffn_hc):
            assert isinstance(site, HyperConnection) and site.mode == "mhc" and site.n == N
            assert site.hc_eps == model.config.hc_eps and site.rms_eps == model.config.rms_norm_eps
            assert site.sinkhorn_iters == model.config.hc_sinkhorn_iters
    assert isinstance(model.model.hc_head, HyperHead)
    assert is_deepseek_v4_patched(model)


def test_unpatch_restores_transformers_modules(ids):
    model = make_model()
    logits0, _ = step(model, ids)
    params0 = dict(model.named_parameters())
    patch_deepseek_v4(model)
    patch_deepseek_v4(model)  # idempotent
    assert unpatch_deepseek_v4(model) is model
    assert not is_deepseek_v4_patched(model)
    for layer in model.model.layers:
        assert type(layer) is DeepseekV4DecoderLayer
        assert type(layer.attn_hc) is DeepseekV4HyperConnection
        assert type(layer.ffn_hc) is DeepseekV4HyperConnection
    assert type(model.model.hc_head) is DeepseekV4HyperHead
    assert all(params0[n] is p for n, p in model.named_parameters())
    logits1, _ = step(model, ids)
    assert torch.equal(logits1, logits0)


def test_optimizer_made_before_patch_keeps_working(ids):
    model = make_model()
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)  # linear in the gradients
    opt_twin = torch.optim.SGD(twin.parameters(), lr=0.5)
    patch_deepseek_v4(model)
    for m, o in ((model, opt), (twin, opt_twin)):
        step(m, ids)
        o.step()
    for (n, p), (_, q) in zip(model.named_parameters(), twin.named_parameters()):
        assert rel(p.detach(), q.detach()) < 1e-4, n
    assert rel(model.model.layers[0].attn_hc.fn.detach(), make_model().model.layers[0].attn_hc.fn) > 1e-6


def test_save_pretrained_from_pretrained_roundtrip(tmp_path, ids):
    model = patch_deepseek_v4(make_model())
    with torch.no_grad():
        logits0 = model(ids, use_cache=False).logits
    model.save_pretrained(tmp_path)
    plain, info = DeepseekV4ForCausalLM.from_pretrained(tmp_path, output_loading_info=True,
                                                        dtype=torch.float32)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    sd0, sd1 = model.state_dict(), plain.state_dict()
    assert sd0.keys() == sd1.keys() and all(torch.equal(sd0[k], sd1[k]) for k in sd0)
    patch_deepseek_v4(plain)
    with torch.no_grad():
        assert torch.equal(plain(ids, use_cache=False).logits, logits0)


def test_gradient_checkpointing_and_generate(ids):
    model = make_model()
    _, g0 = step(model, ids)
    patch_deepseek_v4(model)
    _checkpointing(model, True)
    model.train()
    _, g1 = step(model, ids)
    assert max(rel(g1[k], g0[k]) for k in g0 if g0[k].norm() > 0) < 1e-3
    _checkpointing(model, False)
    model.eval()
    ref = make_model().eval()
    prompt = ids[:1, :8]
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(prompt, **kw), ref.generate(prompt, **kw))


def test_site_and_head_modules_match_transformers():
    """Item 1 of the issue at the module level: from_deepseek_v4 computes V4's site and head."""
    cfg = tiny_config()
    torch.manual_seed(3)
    site = DeepseekV4HyperConnection(cfg)
    head = DeepseekV4HyperHead(cfg)
    with torch.no_grad():
        for p in (site.fn, head.hc_fn):
            p.normal_(0, 0.5)
        for p in (site.base, head.hc_base):
            p.normal_(0, 1)
        site.scale.uniform_(0.5, 2)
        head.hc_scale.uniform_(0.5, 2)
    branch = torch.nn.Linear(64, 64)
    x = torch.randn(2, 5, N, 64)
    post, comb, collapsed = site(x)
    want = post.unsqueeze(-1) * branch(collapsed).unsqueeze(-2) + comb.transpose(-1, -2) @ x
    hc = HyperConnection.from_deepseek_v4(branch, site.fn, site.base, site.scale,
                                          eps=cfg.hc_eps, iters=cfg.hc_sinkhorn_iters)
    assert rel(hc(x), want) < 1e-6
    exported = hc.to_deepseek_v4()
    for k in ("fn", "base", "scale"):
        assert torch.equal(exported[k], getattr(site, k))
    ours = HyperHead.from_deepseek_v4(head.hc_fn, head.hc_base, head.hc_scale,
                                      rms_eps=cfg.rms_norm_eps, eps=cfg.hc_eps)
    assert rel(ours(x), head(x)) < 1e-6
    exported = ours.to_deepseek_v4()
    for k in ("hc_fn", "hc_base", "hc_scale"):
        assert torch.equal(exported[k], getattr(head, k))


def test_hyper_head_default_init_is_the_mean():
    head = HyperHead(16, 4)
    x = torch.randn(3, 4, 16)
    assert torch.allclose(head(x), x.mean(-2), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r"\(\.\.\., 4, 16\)"):
        head(torch.randn(3, 2, 16))


def test_hc_mult_disagreeing_with_n_is_refused():
    model = make_model(layers=1)
    with pytest.raises(ValueError, match=r"n=2\).*hc_mult=4.*disagrees"):
        patch_deepseek_v4(model, n=2)
    # a checkpoint made with hc_mult=2 loaded into tensors the config calls hc_mult=4
    site = model.model.layers[0].attn_hc
    site.fn = torch.nn.Parameter(torch.zeros(8, 4 * 64))
    site.base = torch.nn.Parameter(torch.zeros(8))
    with pytest.raises(ValueError, match=r"fit hc_mult=2.*disagrees"):
        patch_deepseek_v4(model)


def test_not_a_deepseek_v4_model():
    with pytest.raises(TypeError, match="DeepseekV4ForCausalLM or DeepseekV4Model"):
        patch_deepseek_v4(torch.nn.Linear(2, 2))


@pytest.fixture
def _triton_interpreter(monkeypatch):
    pytest.importorskip("triton")
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")  # the kernels on the CPU interpreter


def test_patch_with_fused_kernels_matches_transformers(_triton_interpreter):
    """The fused Triton path (what CUDA runs) computes V4's convention too, eps terms included."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = make_model(layers=2).to(dev)
    x = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(2)).to(dev)
    logits0, g0 = step(model, x)
    patch_deepseek_v4(model, backend="triton")
    logits1, g1 = step(model, x)
    assert rel(logits1, logits0) < 1e-5
    all0 = torch.cat([g.flatten() for g in g0.values()])
    all1 = torch.cat([g1[k].flatten() for k in g0])
    assert rel(all1, all0) < 1e-4
    for k in g0:  # measured worst: 7e-6 (a gate gradient)
        assert rel(g1[k], g0[k]) < 1e-4, k


def test_apply_patches_the_classes_before_loading(tmp_path, ids):
    plain = make_model().eval()  # built before apply: plain transformers
    with torch.no_grad():
        logits0 = plain(ids, use_cache=False).logits
    plain.save_pretrained(tmp_path)
    apply_mhc_kernels_to_deepseek_v4(backend="torch")
    try:
        model, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True,
                                                           dtype=torch.float32)
        assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
        assert is_deepseek_v4_patched(model) and isinstance(model.model.hc_head, HyperHead)
        assert {c.backend for c in hyper_connections(model)} == {"torch"}
        assert "MhcDeepseekV4DecoderLayer" in model._no_split_modules
        with torch.no_grad():
            assert rel(model.eval()(ids, use_cache=False).logits, logits0) < 1e-5
        # a constructor too, initialised by transformers before the patch (not left empty)
        fresh = DeepseekV4ForCausalLM(tiny_config())
        assert is_deepseek_v4_patched(fresh)
        site = fresh.model.layers[1].ffn_hc
        assert torch.equal(site.scale, torch.ones(3)) and torch.equal(site.base, torch.zeros(24))
        assert 0.01 < site.fn.std().item() < 0.03  # transformers' normal(0, initializer_range)
    finally:
        revert_mhc_kernels_to_deepseek_v4()
    assert not is_deepseek_v4_patched(DeepseekV4ForCausalLM(tiny_config()))


def test_auto_mhc_model_loads_v4_patched_and_leaves_the_classes_alone(tmp_path, ids):
    from torch_mhc.integrations.transformers import AutoMhcModelForCausalLM
    plain = make_model().eval()
    plain.save_pretrained(tmp_path)
    model = AutoMhcModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32,
                                                    backend="torch")
    assert is_deepseek_v4_patched(model)
    with torch.no_grad():
        assert rel(model.eval()(ids, use_cache=False).logits,
                   plain(ids, use_cache=False).logits) < 1e-5
    assert not is_deepseek_v4_patched(DeepseekV4ForCausalLM(tiny_config()))
    fresh = AutoMhcModelForCausalLM.from_config(tiny_config(), backend="torch")
    assert is_deepseek_v4_patched(fresh)
