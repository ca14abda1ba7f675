"""Upcycling tiny random transformers models (no downloads) to mHC / HC / residual streams."""
import copy
import json
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip(
    "transformers", minversion="5.0",
    reason="needs transformers >= 5.0: pip install 'torch-mhc[hf]'")

from transformers import (  # noqa: E402
    AutoModelForCausalLM, GPT2Config, LlamaConfig, LlamaForCausalLM, MistralConfig, Qwen2Config,
    Qwen3Config)

from torch_mhc import HyperConnection  # noqa: E402
from torch_mhc.integrations.transformers import (  # noqa: E402
    SUPPORTED_MODEL_TYPES, UPCYCLED_MODEL_TYPE, hc_state_dict, hyper_connections, is_upcycled,
    load_upcycled, save_upcycled, upcycle)

SIZES = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
             pad_token_id=0, bos_token_id=0, eos_token_id=1)
FAMILIES = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config,
            "mistral": MistralConfig}


def make(family="llama", **kw):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(FAMILIES[family](**SIZES, **kw)).float().eval()


def _checkpointing(model, on):
    """transformers 5.x renamed gradient_checkpointing_* to activation_checkpointing_*."""
    name = "activation" if hasattr(model, "activation_checkpointing_enable") else "gradient"
    getattr(model, f"{name}_checkpointing_{'enable' if on else 'disable'}")()


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(2, 128, (2, 16), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("mode", ["mhc", "hc", "residual"])
def test_same_logits_at_step_zero_then_trains(family, mode, ids):
    model = make(family)
    with torch.no_grad():
        logits0 = model(ids).logits
    keys0 = set(model.state_dict())
    base0 = {k: v.clone() for k, v in model.state_dict().items()}
    assert upcycle(model, n=4, mode=mode) is model
    assert is_upcycled(model)
    with torch.no_grad():
        logits1 = model(ids).logits
    assert rel(logits1, logits0) < 1e-5
    # every pretrained tensor keeps its key; the only new keys are the connections'
    new = set(model.state_dict()) - keys0
    assert keys0 <= set(model.state_dict())
    assert all(".attn_hc." in k or ".ffn_hc." in k for k in new)
    assert set(hc_state_dict(model)) == new
    for layer in model.model.layers:
        assert isinstance(layer.attn_hc, HyperConnection) and layer.attn_hc.mode == mode
        assert isinstance(layer.ffn_hc, HyperConnection) and layer.ffn_hc.n == 4
    if mode == "residual":
        assert not new  # nothing to learn: the streams are one residual
        return
    # one optimiser step on the hyper-connection parameters only changes the logits
    model.train()
    hc_params = [p for n, p in model.named_parameters() if ".attn_hc." in n or ".ffn_hc." in n]
    opt = torch.optim.AdamW(hc_params, lr=1e-2)
    model(ids, labels=ids).loss.backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        logits2 = model(ids).logits
    assert rel(logits2, logits0) > 1e-4
    for k, v in base0.items():
        assert torch.equal(model.state_dict()[k], v), k


def test_plain_training_loop_lowers_the_loss(ids):
    model = upcycle(make("qwen2"), n=4).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05


def _perturb(model):
    with torch.no_grad():
        for v in hc_state_dict(model).values():
            v.add_(torch.randn_like(v) * 0.05)


@pytest.mark.parametrize("loader", ["auto", "load_upcycled"])
@pytest.mark.parametrize("tied", [False, True])
def test_save_and_reload_round_trip_exactly(tmp_path, ids, tied, loader):
    model = upcycle(make("llama", tie_word_embeddings=tied), n=4, mode="mhc", sinkhorn_iters=12)
    _perturb(model)  # trained-looking connections, not the init
    with torch.no_grad():
        logits0 = model(ids).logits
    save_upcycled(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["mhc_upcycle"] == {"n": 4, "mode": "mhc", "hc_kwargs": {"sinkhorn_iters": 12},
                                  "base_model_type": "llama"}
    assert cfg["model_type"] == UPCYCLED_MODEL_TYPE
    assert cfg["architectures"] == ["MhcLlamaForCausalLM"]
    if loader == "auto":  # plain transformers, as for any registered architecture
        again, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
        assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    else:
        with _no_warning():
            again = load_upcycled(str(tmp_path), backend="torch")
        assert {c.backend for c in hyper_connections(again)} == {"torch"}
    again.eval()
    assert isinstance(again, LlamaForCausalLM) and is_upcycled(again)
    assert type(again.model.layers[0]) is type(model.model.layers[0])
    assert again.model.layers[0].attn_hc.sinkhorn_iters == 12
    sd0, sd1 = model.state_dict(), again.state_dict()
    assert sd0.keys() == sd1.keys()
    assert all(torch.equal(sd0[k], sd1[k]) for k in sd0)
    with torch.no_grad():
        assert torch.equal(again(ids).logits, logits0)


def test_bf16_load_keeps_the_connections_in_float32(tmp_path, ids):
    model = upcycle(make("qwen2"), n=4)
    _perturb(model)
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    hc = hc_state_dict(again)
    assert hc and {v.dtype for v in hc.values()} == {torch.float32}
    assert again.model.embed_tokens.weight.dtype == torch.bfloat16
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in hc.items())
    # device maps keep an upcycled layer whole (its branches use the layer's modules)
    assert "MhcQwen2DecoderLayer" in again._no_split_modules


def test_fresh_process_loads_with_auto_model(tmp_path, ids):
    """Importing torch_mhc.integrations.transformers is all a new process needs."""
    model = upcycle(make("mistral"), n=2, mode="hc")
    _perturb(model)
    model.save_pretrained(tmp_path)
    torch.save({"ids": ids, "logits": model(ids).logits.detach()}, tmp_path / "ref.pt")
    code = (
        "import sys, torch; torch.set_num_threads(1)\n"
        "import torch_mhc.integrations.transformers\n"
        "from transformers import AutoModelForCausalLM\n"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()\n"
        "ref = torch.load(sys.argv[1] + '/ref.pt')\n"
        "with torch.no_grad():\n"
        "    same = torch.equal(m(ref['ids']).logits, ref['logits'])\n"
        "print(type(m).__name__, m.model.layers[0].attn_hc.mode, same)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["MhcMistralForCausalLM", "hc", "True"]


def test_plain_checkpoint_with_an_upcycled_config_is_upcycled_at_load(tmp_path, ids):
    """The connections a checkpoint lacks get torch-mhc's init (not transformers' garbage),
    so a plain checkpoint under an upcycled config equals the original at step 0."""
    ref = make("llama")
    with torch.no_grad():
        logits0 = ref(ids).logits
    ref.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update(model_type=UPCYCLED_MODEL_TYPE, mhc_upcycle={
        "n": 4, "mode": "mhc", "hc_kwargs": {}, "base_model_type": "llama"})
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    model, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == set(hc_state_dict(model)) and len(info["missing_keys"]) == 12
    fresh = hc_state_dict(upcycle(make("llama"), n=4))
    assert all(torch.equal(v, fresh[k]) for k, v in hc_state_dict(model).items())
    with torch.no_grad():
        assert rel(model.eval()(ids).logits, logits0) < 1e-5


def test_checkpoint_of_the_older_format_still_loads(tmp_path, ids):
    """Saved by torch-mhc before the registered type: the family's model_type + mhc_upcycle."""
    model = upcycle(make("qwen3"), n=4)
    _perturb(model)
    with torch.no_grad():
        logits0 = model(ids).logits
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update(model_type="qwen3", architectures=["Qwen3ForCausalLM"])
    del cfg["mhc_upcycle"]["base_model_type"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with _no_warning():
        again = load_upcycled(str(tmp_path))
    with torch.no_grad():
        assert torch.equal(again.eval()(ids).logits, logits0)


class _no_warning:
    """Fail on any warning raised inside (load_upcycled warns on real load problems)."""

    def __enter__(self):
        import warnings
        self._cm = warnings.catch_warnings(record=True)
        self._log = self._cm.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)
        mine = [w for w in self._log if "load_upcycled" in str(w.message)]
        assert not mine, [str(w.message) for w in mine]


def test_load_upcycled_refuses_a_plain_checkpoint(tmp_path):
    make("llama").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not an upcycled checkpoint"):
        load_upcycled(str(tmp_path))
    with pytest.raises(ValueError, match="expects a model returned by upcycle"):
        save_upcycled(make("llama"), tmp_path)


def test_deepcopy_gradient_checkpointing_and_generate(ids):
    ref = make("llama")
    model = upcycle(copy.deepcopy(ref), n=4)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(twin(ids).logits, model(ids).logits)
    # each copy's connections use its own layer's modules
    assert twin.model.layers[1].ffn_hc.branch.__dict__["_layer"] is twin.model.layers[1]
    assert twin.model.layers[1].mlp.up_proj.weight is not model.model.layers[1].mlp.up_proj.weight
    # generation with a KV cache: the same greedy tokens as the original model
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(ids[:1, :6], **kw), ref.generate(ids[:1, :6], **kw))
    # gradient checkpointing goes through the upcycled layers' forward
    model.train()
    model(ids, labels=ids).loss.backward()
    g0 = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    _checkpointing(model, True)
    model(ids, labels=ids).loss.backward()
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, g0[n], rtol=1e-4, atol=1e-7), n


def test_base_model_and_positional_extras(ids):
    ref = make("llama").model
    model = upcycle(copy.deepcopy(ref), n=2)
    with torch.no_grad():
        assert rel(model(ids).last_hidden_state, ref(ids).last_hidden_state) < 1e-5
        hs = model(ids, output_hidden_states=True).hidden_states
    assert hs[0].shape == (2, 16, 64) and hs[1].shape == (2, 16, 2, 64)  # streams in between


def test_unsupported_family_names_the_supported_ones():
    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64))
    with pytest.raises(ValueError, match=r"does not support model_type 'gpt2'.*llama, mistral, qwen2, qwen3"):
        upcycle(gpt2)
    assert {"llama", "mistral", "qwen2", "qwen3"} <= set(SUPPORTED_MODEL_TYPES)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown mode"):
        upcycle(make("llama"), mode="dense")
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        upcycle(make("llama"), n=0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        upcycle(make("llama"), sinkhorn=3)
    model = upcycle(make("llama"))
    with pytest.raises(ValueError, match="already upcycled"):
        upcycle(model)


def test_deepseek_v4_is_pointed_to_patch():
    pytest.importorskip("transformers", minversion="5.8.1")
    from transformers import DeepseekV4Config, DeepseekV4ForCausalLM
    cfg = DeepseekV4Config(vocab_size=64, hidden_size=32, moe_intermediate_size=16,
                           num_hidden_layers=1, num_attention_heads=2, head_dim=16,
                           q_lora_rank=16, n_routed_experts=2, num_experts_per_tok=1,
                           o_groups=1, o_lora_rank=8, index_n_heads=1, index_head_dim=8,
                           layer_types=["sliding_attention"])
    with pytest.raises(ValueError, match="patch_deepseek_v4"):
        upcycle(DeepseekV4ForCausalLM(cfg))


def test_hyper_connections_feed_the_gain_diagnostics(ids):
    from torch_mhc.diagnostics.probe import collect_mappings
    from torch_mhc.integrations.transformers import hyper_connections
    model = upcycle(make("qwen3"), n=4)
    conns = hyper_connections(model)
    assert conns == [m for layer in model.model.layers for m in (layer.attn_hc, layer.ffn_hc)]
    for c in conns:
        c.record_mappings = True
    with torch.no_grad():
        model(ids)
    gains = collect_mappings(conns)["gain"]
    assert len(gains["comp_fwd_max"]) == 4
    assert max(gains["comp_fwd_max"]) < 1.0 + 1e-4  # doubly stochastic at init
