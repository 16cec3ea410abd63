"""Feed-forward blocks: one activation between fc_in/fc_out (GELU exact or tanh; ReLU and ELU for the
democratization study's activation ablation, its Table 3.2), and SwiGLU (Shazeer, 2020) with
gate_proj/up_proj/down_proj (separate, so tensor parallelism shards each column-wise without re-interleaving)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config.model import ModelConfig


_ACTIVATIONS = {"gelu": lambda x: F.gelu(x), "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
                "relu": F.relu, "elu": F.elu}  # ELU with alpha 1 (Clevert et al., 2016)


class GeluMLP(nn.Module):
    """fc_in -> activation -> fc_out (named for its usual activation; ReLU/ELU use the same layout)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.act = _ACTIVATIONS[cfg.activation]
        self.fc_in = nn.Linear(cfg.hidden_size, cfg.ffn_hidden_size, bias=cfg.bias)
        self.fc_out = nn.Linear(cfg.ffn_hidden_size, cfg.hidden_size, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.act(self.fc_in(x)))


class SwiGLUMLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.ffn_hidden_size, bias=cfg.bias)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.ffn_hidden_size, bias=cfg.bias)
        self.down_proj = nn.Linear(cfg.ffn_hidden_size, cfg.hidden_size, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def build_mlp(cfg: ModelConfig) -> nn.Module:
    return SwiGLUMLP(cfg) if cfg.activation == "swiglu" else GeluMLP(cfg)
