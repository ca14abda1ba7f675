"""A GPT-style decoder LM whose every attention and MLP branch sits in a ``HyperConnection``.

RMSNorm (pre-norm inside each branch), rotary position embeddings, SwiGLU MLP, causal
attention through ``scaled_dot_product_attention``, optional weight tying. One switch,
``GPTConfig.connection``, picks ``"mhc"``, ``"hc"``, ``"residual"`` (or a mode added with
``torch_mhc.nn.register_mode``); a transformer block
holds two connections (attention, then MLP), so ``layer_index`` runs over ``2 * n_layer``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import HyperConnection, RMSNorm, connection_mode, expand_streams, reduce_streams
from ..nn.hyper_connection import connection_parameters
from ..nn._init import copy_into
from ..nn.recompute import recompute_streams, resolve_block_size
from .presets import GPT_PRESETS

__all__ = ["GPT", "GPTConfig", "GPT_PRESETS", "gpt_config"]


@dataclass
class GPTConfig:
    """Shape and switches of :class:`GPT`."""

    vocab_size: int = 256
    seq_len: int = 128
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    mlp_hidden: Optional[int] = None  # SwiGLU hidden width; default ~8/3 d rounded up to 64
    connection: str = "mhc"  # "mhc" | "hc" | "residual" | any in torch_mhc.nn.MODES
    n: int = 4  # expansion rate; "residual" always uses 1 stream
    tie_weights: bool = True
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    init_std: float = 0.02
    backend: str = "auto"
    sinkhorn_iters: int = 20
    hc_options: dict = field(default_factory=dict)  # extra HyperConnection kwargs
    # stream recomputation (docs/recompute.md): 0 off; k > 0 keep every k-th stream;
    # -1 the paper's block size for 2 * n_layer connections (Eq. 20)
    recompute_block: int = 0

    def __post_init__(self):
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if (self.d_model // self.n_head) % 2:
            raise ValueError("the head dimension must be even for rotary embeddings")
        if self.mlp_hidden is None:
            self.mlp_hidden = 64 * math.ceil(8 * self.d_model / 3 / 64)
        resolve_block_size(self.recompute_block, 1, 1)  # validates

    @property
    def streams(self) -> int:
        """Number of residual streams actually used (the mode's; 1 for the plain residual)."""
        return connection_mode(self.connection).streams(self.n)


def gpt_config(preset: str, **overrides) -> GPTConfig:
    """A :class:`GPTConfig` from a preset name (:data:`GPT_PRESETS`, read from the table in
    ``torch_mhc.models.presets``), with field overrides."""
    if preset not in GPT_PRESETS:
        raise ValueError(f"unknown GPT preset {preset!r}; choose one of {sorted(GPT_PRESETS)}")
    return GPTConfig(**{**GPT_PRESETS[preset], **overrides})


def rope_tables(seq_len: int, head_dim: int, theta: float):
    """cos/sin tables ``(seq_len, head_dim / 2)`` for rotary embeddings."""
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    ang = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv)
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs ``(x[..., :d/2], x[..., d/2:])`` of ``x (B, H, T, d)``."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


class Attention(nn.Module):
    """Pre-norm causal self-attention branch: ``h -> Wo(attn(RoPE(Wq, Wk) norm(h)))``."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = h.shape
        q, k, v = self.qkv(self.norm(h)).view(B, T, 3, self.n_head, C // self.n_head).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        q, k = apply_rope(q, cos[:T], sin[:T]), apply_rope(k, cos[:T], sin[:T])
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class SwiGLU(nn.Module):
    """Pre-norm SwiGLU MLP branch: ``h -> W2(silu(W1 norm h) * W3 norm h)``."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.gate_up = nn.Linear(cfg.d_model, 2 * cfg.mlp_hidden, bias=False)
        self.proj = nn.Linear(cfg.mlp_hidden, cfg.d_model, bias=False)

    def forward(self, h: torch.Tensor, *_) -> torch.Tensor:
        gate, up = self.gate_up(self.norm(h)).chunk(2, dim=-1)
        return self.proj(F.silu(gate) * up)


class Block(nn.Module):
    """One transformer block: attention and MLP, each in its own hyper-connection."""

    def __init__(self, cfg: GPTConfig, index: int):
        super().__init__()
        kw = dict(n=cfg.streams, mode=cfg.connection, backend=cfg.backend,
                  sinkhorn_iters=cfg.sinkhorn_iters, **cfg.hc_options)
        self.attn = HyperConnection(Attention(cfg), cfg.d_model, layer_index=2 * index, **kw)
        self.mlp = HyperConnection(SwiGLU(cfg), cfg.d_model, layer_index=2 * index + 1, **kw)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.attn(x, cos, sin))


class GPT(nn.Module):
    """Decoder-only LM; ``forward(idx, targets=None) -> (logits, loss)``."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.head.weight = self.embed.weight
        cos, sin = rope_tables(cfg.seq_len, cfg.d_model // cfg.n_head, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 style init: N(0, init_std), output projections scaled by 1/sqrt(2 n_layer);
        the RoPE tables are recomputed and tied weights re-tied. Matrices only: after ``to_empty()`` on a model built
        on the ``meta`` device, call every submodule's ``reset_parameters`` first (norms,
        connections), then this one."""
        if self.cfg.tie_weights and self.head.weight is not self.embed.weight:
            self.head.weight = self.embed.weight  # to_empty() unties them
        cos, sin = rope_tables(self.cfg.seq_len, self.cfg.d_model // self.cfg.n_head,
                               self.cfg.rope_theta)
        copy_into(self.rope_cos, cos)
        copy_into(self.rope_sin, sin)
        std = self.cfg.init_std
        own = {id(p) for p in connection_parameters(self)}  # the connections init their own
        for name, p in self.named_parameters():
            if p.dim() == 2 and id(p) not in own:
                scale = 1 / math.sqrt(2 * self.cfg.n_layer) if name.endswith("proj.weight") else 1
                nn.init.normal_(p, 0.0, std * scale)

    def connections(self):
        """The ``HyperConnection`` modules in depth order (attention, MLP, attention, ...)."""
        return [hc for b in self.blocks for hc in (b.attn, b.mlp)]

    def compile_units(self):
        """The blocks, which :func:`~torch_mhc.models.compile_blocks` compiles one by one."""
        return list(self.blocks)

    def forward(self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None):
        """Token ids ``(B, T)`` -> ``(logits (B, T, vocab), loss)``; ``loss`` is the mean
        cross-entropy against ``targets (B, T)``, or None without targets."""
        T = idx.shape[1]
        if T > self.cfg.seq_len:
            raise ValueError(f"sequence length {T} exceeds the model's seq_len {self.cfg.seq_len}")
        x = expand_streams(self.embed(idx), self.cfg.streams, view=True)
        recompute = resolve_block_size(self.cfg.recompute_block, self.cfg.streams,
                                       2 * self.cfg.n_layer)
        x = recompute_streams(self._blocks, x, recompute)
        logits = self.head(self.norm(reduce_streams(x)))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        return logits, loss

    def _blocks(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, self.rope_cos, self.rope_sin)
        return x

    def num_parameters(self) -> int:
        """Parameter count (tied weights counted once)."""
        return sum(p.numel() for p in self.parameters())
