"""Feed-forward blocks: GELU (exact or tanh) with fc_in/fc_out, and SwiGLU (Shazeer, 2020) with
gate_proj/up_proj/down_proj (separate, so tensor parallelism shards each column-wise without re-interleaving)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config.model import ModelConfig


class GeluMLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"
        self.fc_in = nn.Linear(cfg.hidden_size, cfg.ffn_size, bias=cfg.bias)
        self.fc_out = nn.Linear(cfg.ffn_size, cfg.hidden_size, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(F.gelu(self.fc_in(x), approximate=self.approximate))


class SwiGLUMLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.ffn_size, bias=cfg.bias)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.ffn_size, bias=cfg.bias)
        self.down_proj = nn.Linear(cfg.ffn_size, cfg.hidden_size, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def build_mlp(cfg: ModelConfig) -> nn.Module:
    return SwiGLUMLP(cfg) if cfg.activation == "swiglu" else GeluMLP(cfg)
