"""PEFT LoRA on an upcycled tiny random Llama (no downloads): the connections train only when
listed in ``modules_to_save``, next to the adapters, and save/reload with them."""
import copy

import pytest
import torch

pytest.importorskip("transformers", minversion="5.0",
                    reason="needs transformers >= 5.0: pip install 'torch-mhc[hf]'")
peft = pytest.importorskip("peft", reason="needs peft: pip install peft")

from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: E402

from torch_mhc import HyperConnection  # noqa: E402
from torch_mhc.integrations.transformers import hyper_connections, upcycle  # noqa: E402

SIZES = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
             pad_token_id=0, bos_token_id=0, eos_token_id=1)
HC = ["attn_hc", "ffn_hc"]


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return upcycle(AutoModelForCausalLM.from_config(LlamaConfig(**SIZES)), n=4).eval()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(2, 128, (4, 16), generator=torch.Generator().manual_seed(1))


def lora(base, **kw):
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], **kw)
    return peft.get_peft_model(copy.deepcopy(base), cfg)


def trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_without_modules_to_save_no_connection_trains(base):
    names = trainable(lora(base))
    assert names and all("lora_" in n for n in names)
    assert not any("_hc." in n for n in names)


def test_modules_to_save_trains_the_connections_with_the_adapters(base, ids, tmp_path):
    model = lora(base, modules_to_save=HC)
    names = trainable(model)
    hc_names = {n for n in names if "_hc." in n}
    assert len(hc_names) == 2 * 2 * 3  # 2 layers x (attn, ffn) x (fn, base, scale)
    assert names - hc_names and all("lora_" in n for n in names - hc_names)
    layer = model.base_model.model.model.layers[0]
    copy_hc = layer.attn_hc.modules_to_save["default"]
    assert isinstance(copy_hc, HyperConnection)
    # the trained copy's branch is the layer's own (LoRA-wrapped) attention, not a duplicate
    assert copy_hc.branch.__dict__["_layer"] is layer
    assert hyper_connections(model) == [
        m.attn_hc.modules_to_save["default"] if k == 0 else m.ffn_hc.modules_to_save["default"]
        for m in model.base_model.model.model.layers for k in (0, 1)]

    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2,
                            weight_decay=0.0)  # parameters move only by their gradients
    model.train()
    losses = []
    for _ in range(6):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.02
    after = dict(model.named_parameters())
    for n, v in start.items():  # every connection parameter and every adapter moved
        assert not torch.equal(after[n].detach(), v), n
    for n, v in frozen.items():  # the pretrained weights and the original connections did not
        assert torch.equal(after[n].detach(), v), n

    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    model.save_pretrained(tmp_path)
    reloaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, logits)
    merged = model.merge_and_unload()
    assert isinstance(merged.model.layers[1].ffn_hc, HyperConnection)
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, logits, atol=1e-5, rtol=0)
