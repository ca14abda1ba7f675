"""Upcycle a pretrained transformers decoder-only model into an mHC (or HC) model.

Importing this module needs transformers; use it through :mod:`torch_mhc.integrations.transformers`.

What :func:`upcycle` does, in place, to every decoder layer ``i`` of the model:

* adds ``layer.attn_hc`` and ``layer.ffn_hc``: :class:`torch_mhc.HyperConnection` modules
  (``layer_index`` ``2i`` and ``2i + 1``) whose branches are the layer's own
  ``input_layernorm -> self_attn`` and ``post_attention_layernorm -> mlp``, referenced, not
  re-registered, so every pretrained weight keeps its state-dict key;
* swaps the layer's class for a subclass (``Mhc<LayerClass>``) whose ``forward`` is
  ``x <- attn_hc(x); x <- ffn_hc(x)`` on ``n`` streams; the first layer widens the embedding
  to ``n`` copies (:func:`torch_mhc.expand_streams`), the last collapses the streams by their
  mean (:func:`torch_mhc.reduce_streams`) before the model's final norm.

With our initialisation (README, "Design decisions") the upcycled model computes the
original model's logits at step 0: identical streams stay identical, the branch reads
exactly that hidden state and its output is added to every stream.

The settings are recorded in ``model.config.mhc_upcycle``, and the model's and config's
classes become ``Mhc<Class>`` subclasses saved with ``model_type = "mhc_upcycled"`` (see
:mod:`.auto`), so ``save_pretrained`` (and the checkpoints of HF ``Trainer``) write a
directory that ``AutoModelForCausalLM.from_pretrained`` loads as the upcycled model.
"""
from __future__ import annotations

import inspect
import json
import os
import warnings
from typing import Any, Dict, Optional

import torch
from torch import nn

from ...nn.hyper_connection import HyperConnection
from ...nn.modes import connection_mode
from ...nn.streams import expand_streams, reduce_streams
from ._branch import SublayerBranch
from ._compat import SUPPORTED_MODEL_TYPES, UPCYCLED_MODEL_TYPE

__all__ = ["SUPPORTED_MODEL_TYPES", "upcycle", "is_upcycled", "save_upcycled", "load_upcycled",
           "hc_state_dict"]


_SITES = (("attn_hc", "input_layernorm", "self_attn"), ("ffn_hc", "post_attention_layernorm", "mlp"))
_HC_KWARGS = ("sinkhorn_iters", "rms_eps", "hc_eps", "gate_init")
_UPCYCLED_CLASSES: Dict[type, type] = {}


class _UpcycledLayerMixin:
    """``forward`` of an upcycled decoder layer (see the module docstring)."""

    _mhc_upcycled = True

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """``(B, S, C)`` (first layer) or streams ``(B, S, n, C)`` -> streams, or ``(B, S, C)``
        after the last layer. Extra arguments go to the attention branch, as in the original."""
        if args:  # positional extras: name them with the original layer's signature
            mro = type(self).__mro__
            kwargs = _bind_extras(mro[mro.index(_UpcycledLayerMixin) + 1], hidden_states,
                                  args, kwargs)
        streams = hidden_states
        if self._mhc_expand:
            streams = expand_streams(hidden_states, self._mhc_n)
        streams = self.attn_hc(streams, **kwargs)
        streams = self.ffn_hc(streams)
        if self._mhc_collapse:
            return reduce_streams(streams, "mean")
        return streams


def _bind_extras(orig_cls: type, hidden_states, args, kwargs) -> Dict[str, Any]:
    sig = inspect.signature(orig_cls.forward)
    bound = sig.bind(None, hidden_states, *args, **kwargs).arguments
    out: Dict[str, Any] = {}
    for i, (name, value) in enumerate(bound.items()):
        if i < 2:
            continue
        if sig.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        else:
            out[name] = value
    return out


def _upcycled_class(cls: type) -> type:
    """``Mhc<cls>``: a subclass of the original layer class with the upcycled ``forward``.

    Registered in this module under its name so that ``pickle``/``deepcopy`` find it; it is a
    subclass of ``cls``, so ``isinstance`` checks, gradient checkpointing and transformers'
    output capture keep working."""
    sub = _UPCYCLED_CLASSES.get(cls)
    if sub is None:
        name = f"Mhc{cls.__name__}"
        while name in globals():
            name += "_"
        sub = type(name, (_UpcycledLayerMixin, cls), {
            "__module__": __name__, "__qualname__": name,
            "__doc__": f"{cls.__name__} upcycled to hyper-connections by torch_mhc "
                       "(see torch_mhc.integrations.transformers.upcycling)."})
        globals()[name] = sub
        _UPCYCLED_CLASSES[cls] = sub
    return sub


def _decoder(model: nn.Module) -> nn.Module:
    """The module holding ``layers`` and ``norm`` (``model.model`` for ``*ForCausalLM``)."""
    prefix = getattr(model, "base_model_prefix", "model")
    for cand in (model, getattr(model, prefix, None), getattr(model, "model", None)):
        if cand is not None and isinstance(getattr(cand, "layers", None), nn.ModuleList) \
                and isinstance(getattr(cand, "norm", None), nn.Module):
            return cand
    raise TypeError(f"upcycle expects a transformers decoder-only model (e.g. LlamaForCausalLM) "
                    f"whose base model has `layers` and a final `norm`; {type(model).__name__} "
                    "has neither")


def _model_type(model: nn.Module) -> Optional[str]:
    """``config.model_type``; for a model built from an upcycled checkpoint, its family's."""
    cfg = getattr(model, "config", None)
    mtype = getattr(cfg, "model_type", None) if cfg is not None else None
    if mtype == UPCYCLED_MODEL_TYPE:
        return (getattr(cfg, "mhc_upcycle", None) or {}).get("base_model_type")
    return mtype


def is_upcycled(model: nn.Module) -> bool:
    """True when ``model``'s decoder layers run hyper-connections made by :func:`upcycle`."""
    return any(getattr(m, "_mhc_upcycled", False) for m in model.modules())


def upcycle(model: nn.Module, n: int = 4, mode: str = "mhc", *, backend: str = "auto",
            check_family: bool = True, hc_dtype: torch.dtype = torch.float32,
            **hc_kwargs) -> nn.Module:
    """Turn a pretrained transformers decoder-only model into an ``n``-stream ``mode`` model,
    in place; see the module docstring. Returns ``model``.

    Args:
        model: e.g. ``LlamaForCausalLM``, ``Qwen2ForCausalLM``, ``MistralForCausalLM`` or their
            base models; ``config.model_type`` must be in :data:`SUPPORTED_MODEL_TYPES`.
        n: number of streams (expansion rate), >= 1.
        mode: ``"mhc"``, ``"hc"`` or ``"residual"`` (see :class:`torch_mhc.HyperConnection`).
        backend: ``"auto"``, ``"torch"`` or ``"triton"`` for the mHC ops.
        check_family: set ``False`` to try a family outside the list whose layers have the
            Llama layout; compare the logits before and after yourself.
        hc_dtype: dtype of the new hyper-connection parameters (float32, as DeepSeek-V4 keeps
            its mHC parameters, whatever the model's dtype).
        **hc_kwargs: ``sinkhorn_iters``, ``rms_eps``, ``hc_eps``, ``gate_init`` of
            :class:`torch_mhc.HyperConnection`.
    """
    connection_mode(mode)  # a ValueError listing the registered modes if unknown
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    bad = sorted(set(hc_kwargs) - set(_HC_KWARGS))
    if bad:
        raise TypeError(f"upcycle got unexpected keyword argument(s) {bad}; "
                        f"HyperConnection options are {list(_HC_KWARGS)}")
    if is_upcycled(model):
        raise ValueError("this model is already upcycled; upcycle a fresh copy of the original")
    mtype = _model_type(model)
    if mtype == "deepseek_v4":
        raise ValueError("DeepSeek-V4 already uses mHC; run it on torch-mhc with "
                         "torch_mhc.integrations.transformers.patch_deepseek_v4(model)")
    if check_family and mtype not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"upcycle does not support model_type {mtype!r} ({type(model).__name__}); supported "
            f"families: {', '.join(SUPPORTED_MODEL_TYPES)}. For another decoder-only family with "
            "the Llama layer layout (input_layernorm -> self_attn -> residual, "
            "post_attention_layernorm -> mlp -> residual), pass check_family=False and compare "
            "the logits before and after")
    dec = _decoder(model)
    n_layers = len(dec.layers)
    limit = getattr(getattr(dec, "config", None), "num_hidden_layers", n_layers) or n_layers
    used = min(n_layers, limit)
    if used == 0:
        raise ValueError("the model has no decoder layers to upcycle")
    for i, layer in enumerate(dec.layers):
        missing = [a for _, norm, mod in _SITES for a in (norm, mod) if not hasattr(layer, a)]
        if missing:
            raise ValueError(f"decoder layer {i} ({type(layer).__name__}) lacks {missing}: it does "
                             "not have the Llama layer layout upcycle needs")
    for i, layer in enumerate(dec.layers):
        ref = next(layer.parameters(), None)
        device = ref.device if ref is not None else None
        dim = getattr(getattr(dec, "config", None), "hidden_size", None) \
            or getattr(layer, "hidden_size", None) or dec.norm.weight.shape[-1]
        for k, (site, norm, mod) in enumerate(_SITES):
            hc = HyperConnection(SublayerBranch(layer, norm, mod), int(dim), n, mode,
                                 layer_index=2 * i + k, backend=backend, device=device,
                                 dtype=hc_dtype, **hc_kwargs)
            hc.train(layer.training)
            setattr(layer, site, hc)
        layer._mhc_n = n
        layer._mhc_expand = i == 0
        layer._mhc_collapse = i == used - 1
        layer.__class__ = _upcycled_class(type(layer))
    settings = {"n": n, "mode": mode, "hc_kwargs": dict(hc_kwargs), "base_model_type": mtype}
    cfg = getattr(model, "config", None)
    if cfg is not None:
        try:
            json.dumps(settings)
            cfg.mhc_upcycle = settings
        except (TypeError, AttributeError) as exc:  # pragma: no cover - exotic configs
            raise ValueError(f"cannot record the upcycle settings in the config: {exc}") from exc
    _adopt(model)
    return model


def _adopt(model: nn.Module) -> None:
    """Make an upcycled transformers model save and load as one: its class becomes
    ``Mhc<Class>`` and its config's ``Mhc<ConfigClass>`` (``model_type = "mhc_upcycled"``,
    registered with the Auto classes; see :mod:`.auto`), and device maps keep each upcycled
    layer on one device and the connections in float32."""
    from transformers import PreTrainedModel

    from .auto import upcycled_config_class, upcycled_model_class
    if not isinstance(model, PreTrainedModel) or getattr(model, "config", None) is None:
        return
    model.config.__class__ = upcycled_config_class(type(model.config))
    model.__class__ = upcycled_model_class(type(model))
    try:  # transformers (5.x) looks up output capture (output_hidden_states) by class name
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
        _CAN_RECORD_REGISTRY[model] = model._can_record_outputs
    except (ImportError, AttributeError, TypeError):  # other versions: nothing to do
        pass
    for m in model.modules():
        if not isinstance(m, PreTrainedModel):
            continue
        m._keep_in_fp32_modules_strict = set(m._keep_in_fp32_modules_strict or ()) | {
            "attn_hc", "ffn_hc"}
        no_split = set(m._no_split_modules or ())
        m._no_split_modules = no_split | {f"Mhc{name}" for name in no_split}


def hc_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The hyper-connection parameters an upcycle added (``...layers.<i>.{attn,ffn}_hc.*``)."""
    out = {}
    for name, t in model.state_dict().items():
        parts = name.split(".")
        if any(p in ("attn_hc", "ffn_hc") for p in parts):
            out[name] = t
    return out


def save_upcycled(model: nn.Module, save_directory: str, **save_pretrained_kwargs) -> None:
    """Save an upcycled model: ``model.save_pretrained(save_directory)`` (safetensors weights,
    hyper-connection parameters included, and ``config.json`` with ``mhc_upcycle``).
    Reload with :func:`load_upcycled`."""
    if not is_upcycled(model):
        raise ValueError("save_upcycled expects a model returned by upcycle(); use "
                         "save_pretrained for a plain model")
    if not hasattr(model, "save_pretrained"):
        raise TypeError(f"{type(model).__name__} has no save_pretrained (not a transformers model)")
    save_pretrained_kwargs.setdefault("safe_serialization", True)
    try:
        model.save_pretrained(save_directory, **save_pretrained_kwargs)
    except TypeError:  # newer transformers dropped the flag (always safetensors)
        save_pretrained_kwargs.pop("safe_serialization", None)
        model.save_pretrained(save_directory, **save_pretrained_kwargs)


_HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "trust_remote_code",
               "subfolder")


def _checkpoint_files(path: str, hub: Optional[Dict[str, Any]] = None) -> Dict[str, str]:
    """``{state-dict key: safetensors file}`` of a local directory or a Hub repository."""
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME
    hub = dict(hub or {})
    subfolder = hub.pop("subfolder", None)
    if not os.path.isdir(path):
        from huggingface_hub import snapshot_download
        opts = {k: hub[k] for k in ("revision", "token", "cache_dir", "local_files_only") if k in hub}
        path = snapshot_download(path, allow_patterns=["*.safetensors", "*.json"], **opts)
    if subfolder:
        path = os.path.join(path, subfolder)
    index = os.path.join(path, SAFE_WEIGHTS_INDEX_NAME)
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return {k: os.path.join(path, v) for k, v in weight_map.items()}
    single = os.path.join(path, SAFE_WEIGHTS_NAME)
    if not os.path.exists(single):
        raise FileNotFoundError(f"no {SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME} in {path}; "
                                "save the upcycled model with save_upcycled / save_pretrained")
    from safetensors import safe_open
    with safe_open(single, "pt") as f:
        return {k: single for k in f.keys()}


def load_upcycled(path: str, model_class=None, *, backend: str = "auto",
                  **from_pretrained_kwargs) -> nn.Module:
    """Load an upcycled model saved by :func:`save_upcycled` (or by ``save_pretrained`` / HF
    ``Trainer`` on an upcycled model). Such a checkpoint loads with plain
    ``AutoModelForCausalLM.from_pretrained`` too; this adds ``backend`` and ``model_class``
    (the original family's class, e.g. ``Qwen2ForCausalLM``, or an Auto class; default
    ``AutoModelForCausalLM``). Extra keyword arguments go to ``from_pretrained``.

    Checkpoints of older torch-mhc versions (the family's own ``model_type`` plus
    ``mhc_upcycle``) are read too: ``from_pretrained``, :func:`upcycle` with the recorded
    settings, then the hyper-connection tensors from the safetensors files."""
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

    from .auto import _set_backend, upcycled_model_class

    hub = {k: from_pretrained_kwargs[k] for k in _HUB_KWARGS if k in from_pretrained_kwargs}
    config = from_pretrained_kwargs.pop("config", None) or AutoConfig.from_pretrained(path, **hub)
    settings = getattr(config, "mhc_upcycle", None)
    if not isinstance(settings, dict) or "n" not in settings:
        raise ValueError(f"{path} is not an upcycled checkpoint (its config has no "
                         "'mhc_upcycle'); load it with from_pretrained, then call upcycle()")
    if getattr(config, "model_type", None) == UPCYCLED_MODEL_TYPE:
        cls = model_class or AutoModelForCausalLM
        if isinstance(cls, type) and issubclass(cls, PreTrainedModel):
            cls = upcycled_model_class(cls)
        model = cls.from_pretrained(path, config=config, **from_pretrained_kwargs)
        return _set_backend(model, backend)
    return _load_legacy(path, config, settings, model_class or AutoModelForCausalLM, backend,
                        hub, from_pretrained_kwargs)


def _load_legacy(path, config, settings, model_class, backend, hub, from_pretrained_kwargs):
    """``from_pretrained`` + :func:`upcycle` + the hyper-connection tensors (old format)."""
    from safetensors import safe_open
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the hc keys are 'unexpected' for the plain model
    from_pretrained_kwargs.pop("output_loading_info", None)
    try:
        model, info = model_class.from_pretrained(path, config=config, output_loading_info=True,
                                                  **from_pretrained_kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    info = info or {}
    is_hc = lambda k: any(p in ("attn_hc", "ffn_hc") for p in k.split("."))  # noqa: E731
    other_unexpected = sorted(k for k in info.get("unexpected_keys", ()) if not is_hc(k))
    problems = {"missing": sorted(info.get("missing_keys", ())),
                "unexpected": other_unexpected,
                "mismatched": sorted(str(k) for k in info.get("mismatched_keys", ()))}
    problems = {k: v for k, v in problems.items() if v}
    if problems:  # what transformers would have reported, minus the expected hc keys
        warnings.warn(f"load_upcycled({path!r}): from_pretrained reported {problems}",
                      stacklevel=3)
    upcycle(model, int(settings["n"]), settings.get("mode", "mhc"), backend=backend,
            **settings.get("hc_kwargs", {}))
    wanted = hc_state_dict(model)
    files = _checkpoint_files(path, hub)
    missing = sorted(k for k in wanted if k not in files)
    if missing:
        raise ValueError(f"{path} lacks {len(missing)} hyper-connection tensor(s), e.g. "
                         f"{missing[:3]}; was it saved from the upcycled model?")
    by_file: Dict[str, list] = {}
    for k in wanted:
        by_file.setdefault(files[k], []).append(k)
    params = dict(model.named_parameters())
    params.update(dict(model.named_buffers()))
    with torch.no_grad():
        for fname, keys in by_file.items():
            with safe_open(fname, "pt") as f:
                for k in keys:
                    t = f.get_tensor(k)
                    if t.shape != params[k].shape:
                        raise ValueError(f"{k}: checkpoint shape {tuple(t.shape)} differs from "
                                         f"the upcycled model's {tuple(params[k].shape)}")
                    params[k].copy_(t)
    return model
