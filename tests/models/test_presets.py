"""The presets table: every preset's model and training settings, pinned value by value."""
import pytest

from torch_mhc.models import GPT_PRESETS, DeepStackConfig, GPTConfig, gpt_config
from torch_mhc.train.config import PRESETS, TrainConfig, resolve_config

# GPTConfig of gpt_config(name): the shape fields (all others keep GPTConfig's defaults)
GPT_EXPECTED = {
    "tiny": dict(d_model=128, n_layer=4, n_head=4, seq_len=128, vocab_size=256, mlp_hidden=384),
    "small": dict(d_model=384, n_layer=6, n_head=6, seq_len=256, vocab_size=256, mlp_hidden=1024),
    "medium": dict(d_model=768, n_layer=12, n_head=12, seq_len=512, vocab_size=256,
                   mlp_hidden=2048),
    "gpt-small": dict(d_model=1024, n_layer=12, n_head=16, seq_len=1024, vocab_size=32768,
                      mlp_hidden=2752),
    "layer": dict(d_model=4096, n_layer=4, n_head=32, seq_len=4096, vocab_size=32768,
                  mlp_hidden=11008),
    "1b": dict(d_model=2048, n_layer=18, n_head=16, seq_len=2048, vocab_size=32768,
               mlp_hidden=5504),
}

# The raw GPT_PRESETS entries (what bench and users read)
GPT_RAW = {
    "tiny": dict(d_model=128, n_layer=4, n_head=4, seq_len=128),
    "small": dict(d_model=384, n_layer=6, n_head=6, seq_len=256),
    "medium": dict(d_model=768, n_layer=12, n_head=12, seq_len=512),
    "gpt-small": dict(d_model=1024, n_layer=12, n_head=16, seq_len=1024, vocab_size=32768),
    "layer": dict(d_model=4096, n_layer=4, n_head=32, seq_len=4096, mlp_hidden=11008,
                  vocab_size=32768),
    "1b": dict(d_model=2048, n_layer=18, n_head=16, seq_len=2048, vocab_size=32768),
}

# PRESETS[name] of the trainer: every field it sets
TRAIN_EXPECTED = {
    "tiny": dict(model="gpt", n_layer=4, d_model=128, n_head=4, mlp_hidden=None, seq_len=128,
                 batch_size=16, max_steps=200, lr=3e-3, warmup_steps=20, eval_interval=50,
                 eval_batches=8, diag_interval=20, ckpt_interval=100, data="shakespeare"),
    "small": dict(model="gpt", n_layer=6, d_model=384, n_head=6, mlp_hidden=None, seq_len=256,
                  batch_size=32, max_steps=3000, lr=1.5e-3, warmup_steps=200,
                  eval_interval=250, eval_batches=20, diag_interval=100, ckpt_interval=500,
                  data="shakespeare"),
    "medium": dict(model="gpt", n_layer=12, d_model=768, n_head=12, mlp_hidden=None,
                   seq_len=512, batch_size=32, max_steps=10000, lr=6e-4, warmup_steps=500,
                   eval_interval=500, eval_batches=40, diag_interval=250, ckpt_interval=1000,
                   data="shakespeare"),
    "lm-study": dict(model="gpt", n_layer=12, d_model=512, n_head=8, mlp_hidden=None,
                     seq_len=256, batch_size=32, max_steps=2000, lr=4e-3, warmup_steps=100,
                     eval_interval=100, eval_batches=20, diag_interval=50, ckpt_interval=500,
                     data="wikitext2"),
    "deep-tiny": dict(model="deep", n_layer=16, d_model=64, n_head=1, mlp_hidden=None,
                      seq_len=64, batch_size=32, max_steps=200, lr=2e-3, warmup_steps=20,
                      eval_interval=50, eval_batches=8, diag_interval=20, ckpt_interval=100,
                      data="shakespeare"),
    "deep": dict(model="deep", n_layer=100, d_model=512, n_head=1, mlp_hidden=None,
                 seq_len=64, batch_size=64, max_steps=1500, lr=1e-3, warmup_steps=200,
                 eval_interval=100, eval_batches=20, diag_interval=50, ckpt_interval=250,
                 data="shakespeare"),
}


@pytest.mark.parametrize("name", sorted(GPT_EXPECTED))
def test_gpt_presets_are_pinned(name):
    assert GPT_PRESETS[name] == GPT_RAW[name]
    assert gpt_config(name) == GPTConfig(**GPT_EXPECTED[name])


@pytest.mark.parametrize("name", sorted(TRAIN_EXPECTED))
def test_train_presets_are_pinned(name):
    assert PRESETS[name] == TRAIN_EXPECTED[name]
    assert resolve_config({"preset": name})[0] == TrainConfig(preset=name, **TRAIN_EXPECTED[name])


def test_the_preset_lists():
    assert list(PRESETS) == ["tiny", "small", "medium", "lm-study", "deep-tiny", "deep"]
    assert set(GPT_RAW) <= set(GPT_PRESETS)


def test_train_and_model_presets_agree_on_shapes():
    """A name in both tables means one model shape."""
    for name in set(PRESETS) & set(GPT_PRESETS):
        cfg = gpt_config(name)
        t = PRESETS[name]
        assert (cfg.n_layer, cfg.d_model, cfg.n_head, cfg.seq_len) == (
            t["n_layer"], t["d_model"], t["n_head"], t["seq_len"]), name


def test_defaults_are_the_tiny_and_deep_presets():
    """The dataclass defaults start where the presets do."""
    assert TrainConfig() == resolve_config({"preset": "tiny"})[0]
    assert GPTConfig() == gpt_config("tiny")
    deep = PRESETS["deep"]
    d = DeepStackConfig()
    assert (d.depth, d.width, d.seq_len) == (deep["n_layer"], deep["d_model"], deep["seq_len"])
