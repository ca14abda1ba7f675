"""Regional compilation: each repeated block of a model compiled on its own.

``torch.compile(model)`` traces every block of the model: Dynamo, AOTAutograd and Inductor
repeat the same work once per block, and an mHC block has more to trace than a plain one
(its connections' ops and kernels). :func:`compile_blocks` compiles the blocks one by one
instead (``nn.Module.compile``), so identical blocks share one compiled graph: Dynamo
compiles the first block and reuses its code for the others, since their parameters are
graph inputs. The first block compiles twice: it takes the embedding's broadcast streams
(``expand_streams(..., view=True)``), the others contiguous ones.

Each block is then a call into a compiled graph of its own (its guards and runtime wrapper:
host time per block and step that one whole-model graph pays once), and Inductor does not
fuse across blocks (the fused connections' kernels end at a block's boundary anyway).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

__all__ = ["compile_blocks", "force_eager"]


def compile_blocks(model: nn.Module, mode: Optional[str] = None,
                   fullgraph: bool = True) -> nn.Module:
    """Compile each of ``model.compile_units()`` (GPT: its blocks; DeepStack: its layers) in
    place with ``torch.compile(mode=mode, fullgraph=fullgraph)``; returns ``model``.

    The rest of the model (embedding, final norm, head, loss) stays eager; parameter names
    and ``state_dict`` keys do not change. Run diagnostics or anything that hooks into the
    blocks under :func:`force_eager`. Compile before wrapping the model in DDP or FSDP2;
    with FSDP2 units inside the blocks pass ``fullgraph=False`` (PyTorch runs FSDP2's hooks
    outside Dynamo, so each such unit breaks the block's graph).
    """
    units = getattr(model, "compile_units", None)
    if units is None:
        raise TypeError(f"{type(model).__name__} has no compile_units(); compile it whole "
                        "with torch.compile(model)")
    for block in units():
        block.compile(mode=None if mode == "default" else mode, fullgraph=fullgraph)
    return model


def force_eager():
    """A context in which compiled code runs its original Python eagerly
    (``torch.compiler.set_stance("force_eager")``, PyTorch 2.6 and later): module and tensor
    hooks and the connections' recorded mappings then work inside compiled blocks."""
    return torch.compiler.set_stance("force_eager")
