"""Run a transformers DeepSeek-V4 model's mHC on torch-mhc (the released checkpoints' convention).

Importing this module imports ``transformers.models.deepseek_v4``; use the functions through
:mod:`torch_mhc.integrations.transformers`, which checks the transformers version first.

What :func:`patch_deepseek_v4` does to each ``DeepseekV4DecoderLayer``:

* ``layer.attn_hc`` / ``layer.ffn_hc`` (``DeepseekV4HyperConnection``) become
  :class:`torch_mhc.HyperConnection` modules in ``mode="mhc"`` with V4's epsilons
  (``rms_eps = config.rms_norm_eps``, ``hc_eps = config.hc_eps``,
  ``sinkhorn_iters = config.hc_sinkhorn_iters``) that hold the very same ``fn``, ``base``,
  ``scale`` parameter objects, so state-dict keys, tensors and optimizer state are untouched;
  their branch is the layer's own ``input_layernorm -> self_attn`` (resp.
  ``post_attention_layernorm -> mlp``), referenced, not re-registered;
* the layer's class becomes :class:`MhcDeepseekV4DecoderLayer`, whose ``forward`` runs the two
  connections (coefficients, pre-mix, branch, post + residual merge: fused Triton kernels on
  CUDA, the PyTorch reference elsewhere). It is still a ``DeepseekV4DecoderLayer`` subclass,
  so gradient checkpointing and transformers' output capture keep working.

and ``model.hc_head`` (``DeepseekV4HyperHead``) becomes a :class:`torch_mhc.nn.hyper_head.HyperHead`
holding the same ``hc_fn``, ``hc_base``, ``hc_scale``.

:func:`apply_mhc_kernels_to_deepseek_v4` does the same to every model built afterwards, at
construction (before ``from_pretrained`` loads the weights), as Liger-Kernel's
``apply_liger_kernel_to_*`` functions do.
"""
from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import List, Optional, Tuple

import torch
from torch import nn
from transformers.models.deepseek_v4.modeling_deepseek_v4 import (
    DeepseekV4DecoderLayer,
    DeepseekV4HyperConnection,
    DeepseekV4HyperHead,
)

from ...nn.hyper_connection import HyperConnection
from ...nn.hyper_head import HyperHead
from ._branch import SublayerBranch

__all__ = ["MhcDeepseekV4DecoderLayer", "patch_deepseek_v4", "unpatch_deepseek_v4",
           "is_deepseek_v4_patched", "apply_mhc_kernels_to_deepseek_v4",
           "revert_mhc_kernels_to_deepseek_v4"]

_SITES = (("attn_hc", "input_layernorm", "self_attn"), ("ffn_hc", "post_attention_layernorm", "mlp"))


class MhcDeepseekV4DecoderLayer(DeepseekV4DecoderLayer):
    """A ``DeepseekV4DecoderLayer`` whose two mHC sites are :class:`torch_mhc.HyperConnection`.

    Computes what the original layer computes (same parameters, same keys):
    ``x <- attn_hc(x)`` with branch ``self_attn(input_layernorm(.))``, then
    ``x <- ffn_hc(x)`` with branch ``mlp(post_attention_layernorm(.), input_ids=...)``.
    Made by :func:`patch_deepseek_v4`, never constructed directly.
    """

    def forward(self, hidden_states: torch.Tensor, input_ids: Optional[torch.Tensor] = None,
                **kwargs) -> torch.Tensor:
        """Streams ``[B, S, hc_mult, hidden]`` -> streams of the same shape."""
        hidden_states = self.attn_hc(hidden_states, **kwargs)
        return self.ffn_hc(hidden_states, input_ids=input_ids)


def _config_n(model: nn.Module) -> Optional[int]:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "hc_mult", None) if cfg is not None else None


def _check_site(name: str, n: int, dim: int, fn: torch.Tensor, base: torch.Tensor,
                scale: torch.Tensor) -> None:
    want = ((n + 2) * n, n * dim)
    if tuple(fn.shape) != want or tuple(base.shape) != (want[0],) or scale.numel() != 3:
        m = base.numel()
        ckpt_n = int(round((m + 1) ** 0.5)) - 1 if m > 0 else 0
        found = f"hc_mult={ckpt_n}" if ckpt_n > 0 and (ckpt_n + 2) * ckpt_n == m else "no hc_mult"
        raise ValueError(
            f"{name}: fn {tuple(fn.shape)}, base {tuple(base.shape)}, scale {tuple(scale.shape)} "
            f"do not fit hc_mult={n}, hidden_size={dim} (expected fn {want}, base ({want[0]},), "
            f"scale (3,)); these tensors fit {found}: the checkpoint's hc_mult disagrees with "
            "the model's")


def _find(model: nn.Module, cls) -> List[Tuple[nn.Module, str, nn.Module, str]]:
    """``(parent, attribute, child, qualified name)`` for every submodule of type ``cls`` (exact or subclass)."""
    found = []
    for parent_name, parent in model.named_modules():
        for name, child in parent.named_children():
            if isinstance(child, cls):
                found.append((parent, name, child, f"{parent_name}.{name}".lstrip(".")))
    return found


def _norm_eps(norm) -> float:
    """The epsilon of V4's unweighted RMSNorm: ``eps`` in earlier transformers releases,
    ``variance_epsilon`` from 5.25 on."""
    eps = getattr(norm, "eps", None)
    return float(norm.variance_epsilon if eps is None else eps)


def patch_deepseek_v4(model: nn.Module, n: Optional[int] = None, backend: str = "auto") -> nn.Module:
    """Patch a transformers DeepSeek-V4 model in place; see the module docstring. Returns ``model``.

    Args:
        model: ``DeepseekV4ForCausalLM``, ``DeepseekV4Model`` or any module containing them.
        n: the expected number of streams; when given it must equal ``config.hc_mult``.
        backend: ``"auto"`` (fused Triton on CUDA when available, else PyTorch), ``"torch"``
            or ``"triton"``.

    Already patched layers are left as they are, so patching twice is harmless.
    """
    layers = [m for m in model.modules() if isinstance(m, DeepseekV4DecoderLayer)]
    heads = _find(model, DeepseekV4HyperHead)
    if not layers and not heads:
        raise TypeError(
            f"patch_deepseek_v4 expects a transformers DeepseekV4ForCausalLM or DeepseekV4Model; "
            f"{type(model).__name__} contains no DeepseekV4DecoderLayer or DeepseekV4HyperHead")
    cfg_n = _config_n(model)
    if n is not None and cfg_n is not None and n != cfg_n:
        raise ValueError(f"patch_deepseek_v4(n={n}) but the model's config has hc_mult={cfg_n}: "
                         "the checkpoint's hc_mult disagrees with n")
    names = {id(m): name for name, m in model.named_modules()}
    for layer in layers:
        if isinstance(layer, MhcDeepseekV4DecoderLayer):
            continue
        lname = names.get(id(layer), type(layer).__name__)
        index = getattr(layer, "layer_idx", 0)
        new = {}
        for k, (site_name, norm, module) in enumerate(_SITES):
            site = getattr(layer, site_name)
            if not isinstance(site, DeepseekV4HyperConnection):
                raise TypeError(f"{lname}.{site_name} is a {type(site).__name__}, expected "
                                "DeepseekV4HyperConnection")
            site_n = site.hc_mult if n is None else n
            if site.hc_mult != site_n:
                raise ValueError(f"{lname}.{site_name} has hc_mult={site.hc_mult} but n={n}: "
                                 "the checkpoint's hc_mult disagrees with n")
            dim = site.fn.shape[1] // max(site_n, 1)
            hidden = getattr(getattr(layer, "input_layernorm", None), "weight", None)
            if hidden is not None:
                dim = hidden.shape[-1]
            _check_site(f"{lname}.{site_name}", site_n, dim, site.fn, site.base, site.scale)
            hc = HyperConnection(SublayerBranch(layer, norm, module), dim, site_n, "mhc",
                                 layer_index=2 * index + k, backend=backend,
                                 sinkhorn_iters=site.hc_sinkhorn_iters,
                                 rms_eps=_norm_eps(site.input_norm), hc_eps=site.hc_eps,
                                 device="meta")  # placeholders: V4's parameters go in below
            hc.fn, hc.base, hc.scale = site.fn, site.base, site.scale  # share, don't copy
            hc.train(site.training)
            new[site_name] = hc
        for site_name, hc in new.items():
            setattr(layer, site_name, hc)
        layer.__class__ = MhcDeepseekV4DecoderLayer
    for parent, attr, head, hname in heads:
        head_n = head.hc_mult
        if n is not None and head_n != n:
            raise ValueError(f"{hname} has hc_mult={head_n} but n={n}: the checkpoint's hc_mult "
                             "disagrees with n")
        if head.hc_fn.dim() != 2 or tuple(head.hc_fn.shape[:1]) != (head_n,) or \
                tuple(head.hc_base.shape) != (head_n,) or head.hc_fn.shape[1] % head_n:
            raise ValueError(f"{hname}: hc_fn {tuple(head.hc_fn.shape)}, hc_base "
                             f"{tuple(head.hc_base.shape)} do not fit hc_mult={head_n}: the "
                             "checkpoint's hc_mult disagrees with the model's")
        new_head = HyperHead(head.hc_fn.shape[1] // head_n, head_n,
                             rms_eps=_norm_eps(head.input_norm), eps=head.eps, backend=backend,
                             device="meta")
        new_head.hc_fn, new_head.hc_base, new_head.hc_scale = head.hc_fn, head.hc_base, head.hc_scale
        new_head.train(head.training)
        new_head._deepseek_v4_patched = True
        setattr(parent, attr, new_head)
    for m in model.modules():  # device maps must not split a patched layer either
        no_split = getattr(m, "_no_split_modules", None)
        if isinstance(no_split, set) and "DeepseekV4DecoderLayer" in no_split:
            no_split.add("MhcDeepseekV4DecoderLayer")
    return model


_APPLIED: dict = {}  # {"init": transformers' DeepseekV4Model.__init__, "backend": ...}


def apply_mhc_kernels_to_deepseek_v4(backend: str = "auto") -> None:
    """Patch transformers' DeepSeek-V4 classes so that every model built from now on
    (``from_pretrained``, ``from_config``, the constructors) comes out patched as by
    :func:`patch_deepseek_v4`: call it before loading, as with Liger-Kernel's
    ``apply_liger_kernel_to_*``. Calling it again only changes ``backend`` for later models;
    :func:`revert_mhc_kernels_to_deepseek_v4` undoes it (models already built stay patched)."""
    from transformers.models.deepseek_v4.modeling_deepseek_v4 import DeepseekV4Model

    from ...ops._backend import check_backend
    _APPLIED["backend"] = check_backend(backend)
    if "init" in _APPLIED:
        return
    original = DeepseekV4Model.__init__

    @functools.wraps(original)
    def __init__(self, config, *args, **kwargs):
        original(self, config, *args, **kwargs)
        patch_deepseek_v4(self, backend=_APPLIED.get("backend", "auto"))

    _APPLIED["init"] = original
    DeepseekV4Model.__init__ = __init__


def revert_mhc_kernels_to_deepseek_v4() -> None:
    """Undo :func:`apply_mhc_kernels_to_deepseek_v4`: models built afterwards are plain
    transformers again."""
    from transformers.models.deepseek_v4.modeling_deepseek_v4 import DeepseekV4Model
    original = _APPLIED.pop("init", None)
    if original is not None:
        DeepseekV4Model.__init__ = original
    _APPLIED.pop("backend", None)


def _applied() -> bool:
    """True while :func:`apply_mhc_kernels_to_deepseek_v4` is in effect."""
    return "init" in _APPLIED


def is_deepseek_v4_patched(model: nn.Module) -> bool:
    """True when every DeepSeek-V4 decoder layer of ``model`` runs on torch-mhc."""
    layers = [m for m in model.modules() if isinstance(m, DeepseekV4DecoderLayer)]
    return bool(layers) and all(isinstance(m, MhcDeepseekV4DecoderLayer) for m in layers)


def unpatch_deepseek_v4(model: nn.Module) -> nn.Module:
    """Undo :func:`patch_deepseek_v4` in place: transformers' own ``DeepseekV4HyperConnection``
    / ``DeepseekV4HyperHead`` modules and layer class come back, holding the current
    parameter objects (trained values, optimizer state and keys are kept). Returns ``model``."""
    for layer in [m for m in model.modules() if isinstance(m, MhcDeepseekV4DecoderLayer)]:
        for site_name, _, _ in _SITES:
            hc = getattr(layer, site_name)
            cfg = SimpleNamespace(hc_mult=hc.n, hc_sinkhorn_iters=hc.sinkhorn_iters,
                                  hc_eps=hc.hc_eps, rms_norm_eps=hc.rms_eps, hidden_size=hc.dim)
            with torch.device("meta"):  # no allocation: the parameters are handed over below
                site = DeepseekV4HyperConnection(cfg)
            site.fn, site.base, site.scale = hc.fn, hc.base, hc.scale
            site.training = hc.training
            setattr(layer, site_name, site)
        layer.__class__ = DeepseekV4DecoderLayer
    for parent, attr, head, _ in _find(model, HyperHead):
        if not getattr(head, "_deepseek_v4_patched", False):
            continue
        cfg = SimpleNamespace(hc_mult=head.n, hc_eps=head.eps, rms_norm_eps=head.rms_eps,
                              hidden_size=head.dim)
        with torch.device("meta"):
            old = DeepseekV4HyperHead(cfg)
        old.hc_fn, old.hc_base, old.hc_scale = head.hc_fn, head.hc_base, head.hc_scale
        old.training = head.training
        setattr(parent, attr, old)
    return model
