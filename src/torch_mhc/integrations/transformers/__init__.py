"""Hugging Face transformers integration (optional extra: ``pip install 'torch-mhc[hf]'``).

Two uses:

* **DeepSeek-V4** (``DeepseekV4ForCausalLM`` / ``DeepseekV4Model``, transformers >= 5.8.1):
  :func:`patch_deepseek_v4` runs every ``attn_hc`` / ``ffn_hc`` site and the ``hc_head`` of a
  loaded model on torch-mhc, forward and backward, with the same parameters and state-dict
  keys; :func:`unpatch_deepseek_v4` restores transformers' modules.
  :func:`apply_mhc_kernels_to_deepseek_v4` patches the classes instead, before loading, and
  :class:`AutoMhcModelForCausalLM` loads with it in effect. See ``docs/deepseek-v4.md``.
* **Upcycling** a pretrained decoder-only model (Llama, Mistral, Qwen2, Qwen3 and the other
  families in :data:`SUPPORTED_MODEL_TYPES`): :func:`upcycle` adds ``n`` residual streams and a
  hyper-connection around every attention and MLP, equal to the original at step 0. Saved
  with ``save_pretrained`` (or :func:`save_upcycled`), it loads with
  ``AutoModelForCausalLM.from_pretrained`` (``model_type = "mhc_upcycled"``, registered when
  this package is imported) or :func:`load_upcycled`. See ``docs/upcycling.md``.

Importing this package imports transformers only to register the upcycled model type (when
transformers >= 5.0 is installed); it never shadows transformers (all imports inside are
absolute), and ``import torch_mhc`` works without it.
"""
from __future__ import annotations

from ._compat import (
    MIN_TRANSFORMERS,
    MIN_TRANSFORMERS_DEEPSEEK_V4,
    SUPPORTED_MODEL_TYPES,
    UPCYCLED_MODEL_TYPE,
    TransformersUnavailableError,
    require_transformers,
    transformers_version,
)

__all__ = [
    "patch_deepseek_v4", "unpatch_deepseek_v4", "is_deepseek_v4_patched",
    "apply_mhc_kernels_to_deepseek_v4", "revert_mhc_kernels_to_deepseek_v4",
    "AutoMhcModelForCausalLM", "UPCYCLED_MODEL_TYPE",
    "upcycle", "is_upcycled", "hyper_connections", "save_upcycled", "load_upcycled", "hc_state_dict",
    "SUPPORTED_MODEL_TYPES", "MIN_TRANSFORMERS", "MIN_TRANSFORMERS_DEEPSEEK_V4",
    "TransformersUnavailableError", "require_transformers", "transformers_version",
]


def _register_auto_classes() -> bool:
    """Let ``AutoConfig`` / ``AutoModelForCausalLM`` read upcycled checkpoints; False (and
    nothing registered) without transformers >= 5.0."""
    try:
        require_transformers("the upcycled model type", MIN_TRANSFORMERS)
    except TransformersUnavailableError:
        return False
    from .auto import register
    register()
    return True


_register_auto_classes()


def __getattr__(name):
    if name == "AutoMhcModelForCausalLM":  # a transformers Auto class: needs transformers
        require_transformers(name, MIN_TRANSFORMERS)
        from .auto import AutoMhcModelForCausalLM
        return AutoMhcModelForCausalLM
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def hyper_connections(model):
    """The :class:`torch_mhc.HyperConnection` modules of ``model`` in depth order (layer 0's
    attention, layer 0's MLP, layer 1's attention, ...): for the diagnostics, e.g. set
    ``record_mappings = True`` on each, run a batch, then
    ``torch_mhc.diagnostics.probe.collect_mappings(hyper_connections(model))``. Under PEFT's
    ``modules_to_save`` the trained copies are listed, not the frozen originals."""
    from ...nn.hyper_connection import HyperConnection
    return [m for name, m in model.named_modules() if isinstance(m, HyperConnection)
            and ".original_module" not in f".{name}"]


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


def apply_mhc_kernels_to_deepseek_v4(backend: str = "auto") -> None:
    """Patch transformers' DeepSeek-V4 classes so that every V4 model built afterwards
    (``from_pretrained``, ``from_config``) runs its mHC on torch-mhc, exactly as
    :func:`patch_deepseek_v4` would; call it before loading (Liger-Kernel style). Undo with
    :func:`revert_mhc_kernels_to_deepseek_v4`. Needs transformers >= 5.8.1."""
    return _v4().apply_mhc_kernels_to_deepseek_v4(backend=backend)


def revert_mhc_kernels_to_deepseek_v4() -> None:
    """Undo :func:`apply_mhc_kernels_to_deepseek_v4` for models built afterwards."""
    return _v4().revert_mhc_kernels_to_deepseek_v4()


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
    settings ride in ``config.json`` as ``mhc_upcycle``). Reload with
    ``AutoModelForCausalLM.from_pretrained`` or :func:`load_upcycled`."""
    return _up().save_upcycled(model, save_directory, **save_pretrained_kwargs)


def load_upcycled(path: str, model_class=None, **kwargs):
    """Reload an upcycled model saved by :func:`save_upcycled` / ``save_pretrained`` / HF
    ``Trainer`` (what ``AutoModelForCausalLM.from_pretrained`` does, plus checkpoints of
    older torch-mhc versions). ``model_class`` defaults to ``AutoModelForCausalLM``;
    ``backend`` and ``from_pretrained`` keyword arguments are accepted."""
    return _up().load_upcycled(path, model_class, **kwargs)
