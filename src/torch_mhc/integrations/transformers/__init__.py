"""Hugging Face transformers integration (optional extra: ``pip install 'torch-mhc[hf]'``).

Two uses:

* **DeepSeek-V4** (``DeepseekV4ForCausalLM`` / ``DeepseekV4Model``, transformers >= 5.8.1):
  :func:`patch_deepseek_v4` runs every ``attn_hc`` / ``ffn_hc`` site and the ``hc_head`` on
  torch-mhc, forward and backward, with the same parameters and state-dict keys;
  :func:`unpatch_deepseek_v4` restores transformers' modules. See ``docs/deepseek-v4.md``.
* **Upcycling** a pretrained decoder-only model (Llama, Mistral, Qwen2, Qwen3 and the other
  families in :data:`SUPPORTED_MODEL_TYPES`): :func:`upcycle` adds ``n`` residual streams and a
  hyper-connection around every attention and MLP, equal to the original at step 0;
  :func:`save_upcycled` / :func:`load_upcycled` save and reload it. See ``docs/upcycling.md``.

This package imports transformers only when one of these functions is called (and never
shadows it: all imports inside are absolute), so ``import torch_mhc`` works without it.
"""
from __future__ import annotations

from ._compat import (
    MIN_TRANSFORMERS,
    MIN_TRANSFORMERS_DEEPSEEK_V4,
    SUPPORTED_MODEL_TYPES,
    TransformersUnavailableError,
    require_transformers,
    transformers_version,
)

__all__ = [
    "patch_deepseek_v4", "unpatch_deepseek_v4", "is_deepseek_v4_patched",
    "upcycle", "is_upcycled", "hyper_connections", "save_upcycled", "load_upcycled", "hc_state_dict",
    "SUPPORTED_MODEL_TYPES", "MIN_TRANSFORMERS", "MIN_TRANSFORMERS_DEEPSEEK_V4",
    "TransformersUnavailableError", "require_transformers", "transformers_version",
]



def hyper_connections(model):
    """The :class:`torch_mhc.HyperConnection` modules of ``model`` in depth order (layer 0's
    attention, layer 0's MLP, layer 1's attention, ...): for the diagnostics, e.g. set
    ``record_mappings = True`` on each, run a batch, then
    ``torch_mhc.diagnostics.probe.collect_mappings(hyper_connections(model))``."""
    from ...nn.hyper_connection import HyperConnection
    return [m for m in model.modules() if isinstance(m, HyperConnection)]


def _v4():
    require_transformers("patch_deepseek_v4", MIN_TRANSFORMERS_DEEPSEEK_V4)
    from . import deepseek_v4
    return deepseek_v4


def _up():
    require_transformers("upcycle", MIN_TRANSFORMERS)
    from . import upcycling
    return upcycling


def patch_deepseek_v4(model, n=None, backend: str = "auto"):
    """Run a transformers ``DeepseekV4ForCausalLM`` / ``DeepseekV4Model`` on torch-mhc, in place.

    Every ``attn_hc`` / ``ffn_hc`` becomes a :class:`torch_mhc.HyperConnection` (V4's epsilons,
    Sinkhorn iterations and the very same ``fn``/``base``/``scale`` parameter objects) around the
    layer's own norm + attention / norm + MoE, and ``hc_head`` a
    :class:`torch_mhc.nn.hyper_head.HyperHead` holding ``hc_fn``/``hc_base``/``hc_scale``. The
    logits and gradients equal transformers' (fp32, up to rounding); state-dict keys, tensors
    and optimizer state are unchanged, so ``save_pretrained``/``from_pretrained`` keep working
    (a reloaded model is plain transformers again: patch it again). ``n``, when given, must
    equal ``config.hc_mult``. ``backend``: ``"auto"`` (fused Triton on CUDA when available,
    else PyTorch), ``"torch"`` or ``"triton"``. Returns ``model``. Needs transformers >= 5.8.1.
    """
    return _v4().patch_deepseek_v4(model, n=n, backend=backend)


def unpatch_deepseek_v4(model):
    """Undo :func:`patch_deepseek_v4` in place (transformers' modules back, same parameters)."""
    return _v4().unpatch_deepseek_v4(model)


def is_deepseek_v4_patched(model) -> bool:
    """True when every DeepSeek-V4 decoder layer of ``model`` runs on torch-mhc."""
    return _v4().is_deepseek_v4_patched(model)


def upcycle(model, n: int = 4, mode: str = "mhc", **kwargs):
    """Turn a pretrained decoder-only transformers model into an ``n``-stream mHC model in
    place (``mode="hc"`` and ``"residual"`` work the same way); equal to the original at
    step 0. Options: ``backend``, ``check_family``, ``hc_dtype`` and HyperConnection's
    ``sinkhorn_iters``, ``rms_eps``, ``hc_eps``, ``gate_init``. Returns ``model``. See
    :func:`torch_mhc.integrations.transformers.upcycling.upcycle`."""
    return _up().upcycle(model, n, mode, **kwargs)


def is_upcycled(model) -> bool:
    """True when ``model`` was upcycled by :func:`upcycle`."""
    return _up().is_upcycled(model)


def hc_state_dict(model):
    """The hyper-connection parameters :func:`upcycle` added, by state-dict key."""
    return _up().hc_state_dict(model)


def save_upcycled(model, save_directory: str, **save_pretrained_kwargs) -> None:
    """``model.save_pretrained(save_directory)`` for an upcycled model (safetensors; the
    settings ride in ``config.json`` as ``mhc_upcycle``). Reload with :func:`load_upcycled`."""
    return _up().save_upcycled(model, save_directory, **save_pretrained_kwargs)


def load_upcycled(path: str, model_class=None, **kwargs):
    """Reload an upcycled model saved by :func:`save_upcycled` / ``save_pretrained`` / HF
    ``Trainer``: ``from_pretrained`` + :func:`upcycle` + the saved hyper-connection tensors.
    ``model_class`` defaults to ``AutoModelForCausalLM``; ``backend`` and ``from_pretrained``
    keyword arguments are accepted."""
    return _up().load_upcycled(path, model_class, **kwargs)
