"""Named presets: one table that the model configs and the trainer both read.

Each row is a model shape and, for the presets ``mhc train`` offers, a training recipe.
Two views of it:

* :data:`GPT_PRESETS`: the shapes of the ``gpt`` rows as :class:`~torch_mhc.models.GPTConfig`
  fields (``torch_mhc.models.gpt_config(name)``; ``mhc bench --preset``);
* :data:`TRAIN_PRESETS`: the rows with a recipe as :class:`~torch_mhc.train.TrainConfig`
  fields (``torch_mhc.train.PRESETS``; ``mhc train --preset``). Each sets every field marked
  ``preset`` there, so switching presets never mixes shapes.

Add a preset here, once; both views pick it up.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

__all__ = ["Preset", "PRESET_TABLE", "GPT_PRESETS", "TRAIN_PRESETS"]


@dataclass(frozen=True)
class Preset:
    """One row of :data:`PRESET_TABLE`.

    Args:
        model: ``"gpt"`` (transformer LM) or ``"deep"`` (plain deep stack).
        shape: ``n_layer`` (blocks or layers), ``d_model`` (width), ``n_head``, ``seq_len``,
            and where a preset fixes them ``mlp_hidden`` and ``vocab_size``.
        recipe: how ``mhc train`` trains it (batch, steps, learning rate, intervals, data);
            ``None`` for a shape only (benchmarks, ``gpt_config``).
    """

    model: str
    shape: Dict[str, Any]
    recipe: Optional[Dict[str, Any]] = None


PRESET_TABLE: Dict[str, Preset] = {
    # ~1M parameters; all three modes of `mhc compare` take a few minutes on a 2-core CPU.
    "tiny": Preset("gpt", dict(d_model=128, n_layer=4, n_head=4, seq_len=128),
                   dict(batch_size=16, max_steps=200, lr=3e-3, warmup_steps=20,
                        eval_interval=50, eval_batches=8, diag_interval=20, ckpt_interval=100,
                        data="shakespeare")),
    # ~11M parameters; minutes on one GPU.
    "small": Preset("gpt", dict(d_model=384, n_layer=6, n_head=6, seq_len=256),
                    dict(batch_size=32, max_steps=3000, lr=1.5e-3, warmup_steps=200,
                         eval_interval=250, eval_batches=20, diag_interval=100,
                         ckpt_interval=500, data="shakespeare")),
    # ~85M parameters; one GPU (bf16), an hour or so.
    "medium": Preset("gpt", dict(d_model=768, n_layer=12, n_head=12, seq_len=512),
                     dict(batch_size=32, max_steps=10000, lr=6e-4, warmup_steps=500,
                          eval_interval=500, eval_batches=40, diag_interval=250,
                          ckpt_interval=1000, data="shakespeare")),
    # LM stability study (docs/results.md): 12 blocks x 512 on WikiText-2 with a high
    # learning rate; residual, hc and mhc in about 20 minutes on one H100.
    "lm-study": Preset("gpt", dict(d_model=512, n_layer=12, n_head=8, seq_len=256),
                       dict(batch_size=32, max_steps=2000, lr=4e-3, warmup_steps=100,
                            eval_interval=100, eval_batches=20, diag_interval=50,
                            ckpt_interval=500, data="wikitext2")),
    # plain deep stack (depth study): a CPU-sized one and the 100 x 512 one for a GPU.
    "deep-tiny": Preset("deep", dict(d_model=64, n_layer=16, n_head=1, seq_len=64),
                        dict(batch_size=32, max_steps=200, lr=2e-3, warmup_steps=20,
                             eval_interval=50, eval_batches=8, diag_interval=20,
                             ckpt_interval=100, data="shakespeare")),
    # 1500 steps: residual ~3, HC ~10, mHC ~7 minutes on one H100 (measured throughput).
    "deep": Preset("deep", dict(d_model=512, n_layer=100, n_head=1, seq_len=64),
                   dict(batch_size=64, max_steps=1500, lr=1e-3, warmup_steps=200,
                        eval_interval=100, eval_batches=20, diag_interval=50,
                        ckpt_interval=250, data="shakespeare")),
    # shapes for benchmarks and gpt_config (no training recipe)
    "gpt-small": Preset("gpt", dict(d_model=1024, n_layer=12, n_head=16, seq_len=1024,
                                    vocab_size=32768)),
    "layer": Preset("gpt", dict(d_model=4096, n_layer=4, n_head=32, seq_len=4096,
                                mlp_hidden=11008, vocab_size=32768)),
    "1b": Preset("gpt", dict(d_model=2048, n_layer=18, n_head=16, seq_len=2048,
                             vocab_size=32768)),
}


def _train_view(p: Preset) -> Dict[str, Any]:
    """A row as TrainConfig fields: the model, its shape (``mlp_hidden`` unset unless the
    row fixes it; the vocabulary comes from the data), then the recipe."""
    s = p.shape
    return {"model": p.model, "n_layer": s["n_layer"], "d_model": s["d_model"],
            "n_head": s["n_head"], "mlp_hidden": s.get("mlp_hidden"), "seq_len": s["seq_len"],
            **p.recipe}


GPT_PRESETS: Dict[str, Dict[str, Any]] = {
    name: dict(p.shape) for name, p in PRESET_TABLE.items() if p.model == "gpt"}
TRAIN_PRESETS: Dict[str, Dict[str, Any]] = {
    name: _train_view(p) for name, p in PRESET_TABLE.items() if p.recipe is not None}
