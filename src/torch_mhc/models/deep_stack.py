"""A deep plain stack for gradient-flow studies (by default 100 layers of width 512).

Token ids -> embedding -> ``depth`` x ``HyperConnection(RMSNorm -> Linear -> GELU)`` ->
stream reduction -> RMSNorm -> logits. Each position is predicted from its own token only
(no mixing across positions), so the network is purely deep, not wide in time: what
differs between ``connection="residual" | "hc" | "mhc"`` is how signal and gradient travel
through depth.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import HyperConnection, RMSNorm, connection_mode, expand_streams, reduce_streams
from ..nn.hyper_connection import connection_parameters
from ..nn.recompute import recompute_streams, resolve_block_size

__all__ = ["DeepStack", "DeepStackConfig"]


@dataclass
class DeepStackConfig:
    """Shape and switches of :class:`DeepStack` (default: 100 layers of width 512)."""

    vocab_size: int = 256
    seq_len: int = 64
    depth: int = 100
    width: int = 512
    connection: str = "mhc"
    n: int = 4
    init_std: float = 0.02
    backend: str = "auto"
    sinkhorn_iters: int = 20
    recompute_block: int = 0  # as GPTConfig.recompute_block (docs/recompute.md), over depth

    def __post_init__(self):
        resolve_block_size(self.recompute_block, 1, 1)  # validates

    @property
    def streams(self) -> int:
        """Number of residual streams actually used (the mode's; 1 for the plain residual)."""
        return connection_mode(self.connection).streams(self.n)


class DeepStack(nn.Module):
    """``forward(idx, targets=None) -> (logits, loss)``, like :class:`torch_mhc.models.GPT`."""

    def __init__(self, cfg: DeepStackConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.layers = nn.ModuleList(
            HyperConnection(nn.Sequential(RMSNorm(cfg.width), nn.Linear(cfg.width, cfg.width),
                                          nn.GELU()),
                            cfg.width, n=cfg.streams, mode=cfg.connection, layer_index=i,
                            backend=cfg.backend, sinkhorn_iters=cfg.sinkhorn_iters)
            for i in range(cfg.depth))
        self.norm = RMSNorm(cfg.width)
        self.head = nn.Linear(cfg.width, cfg.vocab_size, bias=False)
        own = {id(p) for p in connection_parameters(self)}  # the connections init their own
        for p in self.parameters():
            if p.dim() == 2 and id(p) not in own:
                nn.init.normal_(p, 0.0, cfg.init_std)

    def connections(self):
        """The ``HyperConnection`` modules in depth order."""
        return list(self.layers)

    def compile_units(self):
        """The layers, which :func:`~torch_mhc.models.compile_blocks` compiles one by one."""
        return list(self.layers)

    def forward(self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None):
        """Token ids ``(B, T)`` -> ``(logits (B, T, vocab), loss)``; ``loss`` is the mean
        cross-entropy against ``targets (B, T)``, or None without targets."""
        x = expand_streams(self.embed(idx), self.cfg.streams, view=True)
        x = recompute_streams(self._layers, x, resolve_block_size(
            self.cfg.recompute_block, self.cfg.streams, self.cfg.depth))
        logits = self.head(self.norm(reduce_streams(x)))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        return logits, loss

    def _layers(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def num_parameters(self) -> int:
        """Parameter count."""
        return sum(p.numel() for p in self.parameters())
