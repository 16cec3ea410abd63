"""Transformer blocks: sequential (GPT-2/3) or parallel attention+MLP (GPT-J/NeoX, PaLM, phi-1).

Parallel block: h = attn(norm1(x)) + mlp(norm1 or norm2(x)); h = parallel_reduce(h); x = x + dropout(h).
`parallel_reduce` is an identity here; a tensor-parallel plan replaces it with one all-reduce over the TP group
(and makes o_proj/fc_out "row-parallel without reduction"), so the parallel block costs a single reduction.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config.model import ModelConfig
from .attention import Attention, LayerKVCache
from .mlp import build_mlp
from .norm import build_norm


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.parallel = cfg.block == "parallel"
        self.norm1 = build_norm(cfg)
        if not (self.parallel and cfg.parallel_shared_norm):
            self.norm2 = build_norm(cfg)
        self.attn = Attention(cfg)
        self.mlp = build_mlp(cfg)
        if self.parallel:
            self.parallel_reduce = nn.Identity()
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        self.layerdrop = cfg.layerdrop

    def forward(self, x: torch.Tensor, rope=None, cache: LayerKVCache | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, hidden) -> (B, T, hidden)."""
        # LayerDrop: a dropped block still runs with its branches multiplied by 0, so every parameter gets a (zero)
        # gradient and tensor-parallel collectives stay in step across ranks; the block then acts as the identity.
        keep = 1.0
        if self.training and self.layerdrop > 0:
            keep = float(torch.rand(()) >= self.layerdrop)
        if not self.parallel:
            x = x + keep * self.dropout(self.attn(self.norm1(x), rope, cache, mask))
            return x + keep * self.dropout(self.mlp(self.norm2(x)))
        n1 = self.norm1(x)
        n2 = self.norm2(x) if hasattr(self, "norm2") else n1
        h = self.attn(n1, rope, cache, mask) + self.mlp(n2)
        return x + keep * self.dropout(self.parallel_reduce(h))
