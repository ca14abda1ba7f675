"""The branch ``F`` of a hyper-connection built around a transformers decoder layer's own modules."""
from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

__all__ = ["SublayerBranch"]


class SublayerBranch(nn.Module):
    """``F(h) = layer.<module>(layer.<norm>(h), ...)``, first element if it returns a tuple.

    The owning decoder layer is held as a plain attribute, not as a submodule, so the
    layer's norm and sublayer keep their state-dict keys (``layers.0.self_attn.q_proj...``)
    and are not listed twice; this module has no parameters or buffers of its own.

    Args:
        layer: the decoder layer that owns ``norm`` and ``module``.
        norm: attribute name of the pre-norm (``"input_layernorm"``, ...), or ``None``.
        module: attribute name of the sublayer (``"self_attn"`` or ``"mlp"``).
    """

    def __init__(self, layer: nn.Module, norm: Optional[str], module: str):
        super().__init__()
        self.__dict__["_layer"] = layer  # bypass nn.Module registration on purpose
        self.norm_name, self.module_name = norm, module

    def __deepcopy__(self, memo):
        """Copy with the owning layer: the copy's if the layer is being copied too
        (``copy.deepcopy(model)``), else the same layer. Copying a connection alone (PEFT's
        ``modules_to_save`` does) must not copy the layer's attention and MLP: the copy
        would train on frozen duplicates, out of reach of the optimizer and the adapters."""
        layer = self.__dict__["_layer"]
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        state = {k: v for k, v in self.__dict__.items() if k != "_layer"}
        new.__dict__.update(copy.deepcopy(state, memo))
        new.__dict__["_layer"] = memo.get(id(layer), layer)
        return new

    def extra_repr(self) -> str:
        pre = f"{self.norm_name} -> " if self.norm_name else ""
        return f"{pre}{self.module_name} (modules of the enclosing decoder layer)"

    def forward(self, h: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Apply the layer's norm then its sublayer to the branch input ``h (..., C)``."""
        layer = self.__dict__["_layer"]
        if self.norm_name is not None:
            h = getattr(layer, self.norm_name)(h)
        out = getattr(layer, self.module_name)(h, *args, **kwargs)
        return out[0] if isinstance(out, tuple) else out
