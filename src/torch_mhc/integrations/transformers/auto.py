"""transformers Auto classes: upcycled checkpoints load with ``AutoModelForCausalLM``, and
:class:`AutoMhcModelForCausalLM` loads any model with its mHC on torch-mhc.

Importing this module imports transformers; :mod:`torch_mhc.integrations.transformers`
imports it (and calls :func:`register`) when transformers >= 5.0 is installed.

An upcycled model is saved with ``model_type = "mhc_upcycled"`` and the original family in
``mhc_upcycle["base_model_type"]``. The registered :class:`MhcUpcycledConfig` reads such a
``config.json`` into ``Mhc<FamilyConfig>`` (a subclass of e.g. ``LlamaConfig``), and
``AutoModelForCausalLM`` maps that to ``Mhc<FamilyForCausalLM>`` (a subclass of e.g.
``LlamaForCausalLM``) whose constructor builds the original model and upcycles it with the
recorded settings; ``from_pretrained`` then loads every tensor, the connections' included,
like any transformers model (``dtype``, ``device_map``, sharded and Hub checkpoints).
"""
from __future__ import annotations

from typing import Dict

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PreTrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_MAPPING

from ...nn.hyper_connection import HyperConnection
from ...nn.hyper_head import HyperHead
from ...ops._backend import check_backend
from ._compat import UPCYCLED_MODEL_TYPE

__all__ = ["UPCYCLED_MODEL_TYPE", "MhcUpcycledConfig", "AutoMhcModelForCausalLM", "register",
           "upcycled_config_class", "upcycled_model_class"]

_CONFIGS: Dict[type, type] = {}
_MODELS: Dict[type, type] = {}


class MhcUpcycledConfig(PreTrainedConfig):
    """What ``AutoConfig`` finds under ``model_type = "mhc_upcycled"``: reading a config dict
    returns ``Mhc<FamilyConfig>`` for the family named in ``mhc_upcycle["base_model_type"]``."""

    model_type = UPCYCLED_MODEL_TYPE

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        """``Mhc<FamilyConfig>.from_dict(config_dict)`` for the recorded family."""
        settings = config_dict.get("mhc_upcycle")
        base = settings.get("base_model_type") if isinstance(settings, dict) else None
        if base not in CONFIG_MAPPING:
            raise ValueError(f"a config with model_type {UPCYCLED_MODEL_TYPE!r} needs "
                             "mhc_upcycle['base_model_type'] naming a transformers model type; "
                             f"found {base!r}")
        family = CONFIG_MAPPING[base]
        for mapping in (MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_MAPPING):  # the Auto classes must
            model_class = mapping.get(family, None)  # know the model of the config returned
            if isinstance(model_class, type):
                upcycled_model_class(model_class)
        return upcycled_config_class(family).from_dict(config_dict, **kwargs)


def _define(name: str, bases: tuple, attrs: dict) -> type:
    """A class in this module's namespace (so pickle finds it)."""
    while name in globals():
        name += "_"
    cls = type(name, bases, {"__module__": __name__, "__qualname__": name, **attrs})
    globals()[name] = cls
    return cls


def upcycled_config_class(config_class: type) -> type:
    """``Mhc<config_class>``: the family's config, saved with ``model_type = "mhc_upcycled"``."""
    if getattr(config_class, "model_type", None) == UPCYCLED_MODEL_TYPE:
        return config_class
    sub = _CONFIGS.get(config_class)
    if sub is None:
        sub = _define(f"Mhc{config_class.__name__}", (config_class,), {
            "model_type": UPCYCLED_MODEL_TYPE,
            "__doc__": f"{config_class.__name__} of a model upcycled by torch_mhc; the "
                       "settings are in `mhc_upcycle`."})
        _CONFIGS[config_class] = sub
    return sub


class _UpcycledModelMixin:
    """Constructor and weight init of ``Mhc<ModelClass>`` (see the module docstring)."""

    _mhc_upcycled_model = True

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        settings = getattr(config, "mhc_upcycle", None) or {}
        if "n" not in settings:
            raise ValueError(f"{type(self).__name__} needs config.mhc_upcycle (the settings "
                             "upcycle() records); build the model with upcycle() instead")
        from .upcycling import upcycle
        upcycle(self, int(settings["n"]), settings.get("mode", "mhc"),
                **settings.get("hc_kwargs", {}))

    @torch.no_grad()
    def initialize_weights(self):
        """transformers' init, then the connections' own init for any connection parameter
        the checkpoint did not provide (transformers does not know these modules)."""
        super().initialize_weights()
        for m in self.modules():
            if not isinstance(m, HyperConnection):
                continue
            loaded = {k: p.detach().clone() for k, p in m.named_parameters(recurse=False)
                      if getattr(p, "_is_hf_initialized", False)}
            if len(loaded) < len(m._parameters):
                m.reset_parameters()
                for k, v in loaded.items():
                    getattr(m, k).copy_(v)


def upcycled_model_class(model_class: type) -> type:
    """``Mhc<model_class>`` (a subclass), registered with ``AutoModelForCausalLM`` (or
    ``AutoModel`` for a base model) under ``Mhc<config class>``."""
    if getattr(model_class, "_mhc_upcycled_model", False):
        return model_class
    sub = _MODELS.get(model_class)
    if sub is None:
        config_class = upcycled_config_class(model_class.config_class)
        sub = _define(f"Mhc{model_class.__name__}", (_UpcycledModelMixin, model_class), {
            "config_class": config_class,
            "__doc__": f"{model_class.__name__} upcycled to hyper-connections by torch_mhc "
                       "(see torch_mhc.integrations.transformers.upcycling)."})
        for auto, mapping in ((AutoModelForCausalLM, MODEL_FOR_CAUSAL_LM_MAPPING),
                              (AutoModel, MODEL_MAPPING)):
            if mapping.get(model_class.config_class, None) is model_class:
                auto.register(config_class, sub, exist_ok=True)
        _MODELS[model_class] = sub
    return sub


def register() -> None:
    """Register ``model_type = "mhc_upcycled"`` with ``AutoConfig`` (idempotent)."""
    AutoConfig.register(UPCYCLED_MODEL_TYPE, MhcUpcycledConfig, exist_ok=True)


class AutoMhcModelForCausalLM(AutoModelForCausalLM):
    """``AutoModelForCausalLM`` whose models run their mHC on torch-mhc.

    * DeepSeek-V4 checkpoints: loaded with :func:`apply_mhc_kernels_to_deepseek_v4` in effect
      (every ``attn_hc`` / ``ffn_hc`` site and the ``hc_head`` on torch-mhc);
    * upcycled checkpoints: the upcycled model (as ``AutoModelForCausalLM`` does);
    * anything else: the plain transformers model.

    ``backend=`` (``"auto"``, ``"torch"``, ``"triton"``) picks the mHC kernels; every other
    argument goes to ``from_pretrained`` / ``from_config``.
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, backend: str = "auto",
                        **kwargs):
        """Load a checkpoint (directory or Hub id) as described in the class docstring."""
        config = kwargs.get("config")
        if not isinstance(config, PreTrainedConfig):
            hub = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only",
                                          "subfolder", "trust_remote_code") if k in kwargs}
            config = AutoConfig.from_pretrained(pretrained_model_name_or_path, **hub)
        with _mhc_kernels(config, backend):
            model = AutoModelForCausalLM.from_pretrained(pretrained_model_name_or_path,
                                                         *model_args, **kwargs)
        return _set_backend(model, backend)

    @classmethod
    def from_config(cls, config, backend: str = "auto", **kwargs):
        """A freshly initialised model for ``config``, as described in the class docstring."""
        with _mhc_kernels(config, backend):
            model = AutoModelForCausalLM.from_config(config, **kwargs)
        return _set_backend(model, backend)


class _mhc_kernels:
    """DeepSeek-V4's classes on torch-mhc while loading (if the config is V4's and they are
    not patched already); restored afterwards."""

    def __init__(self, config, backend: str):
        self.v4 = getattr(config, "model_type", None) == "deepseek_v4"
        self.backend, self.applied = backend, False

    def __enter__(self):
        if self.v4:
            from .deepseek_v4 import _applied, apply_mhc_kernels_to_deepseek_v4
            if not _applied():
                apply_mhc_kernels_to_deepseek_v4(backend=self.backend)
                self.applied = True
        return self

    def __exit__(self, *exc):
        if self.applied:
            from .deepseek_v4 import revert_mhc_kernels_to_deepseek_v4
            revert_mhc_kernels_to_deepseek_v4()
        return False


def _set_backend(model, backend: str):
    """Every torch-mhc module of ``model`` on ``backend``."""
    backend = check_backend(backend)
    for m in model.modules():
        if isinstance(m, (HyperConnection, HyperHead)):
            m.backend = backend
    return model
