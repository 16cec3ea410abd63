"""Normalization layers: LayerNorm (with or without bias) and RMSNorm; parameters named weight (and bias).

``zero_centered`` (ModelConfig.norm_zero_centered, Megatron's --apply-layernorm-1p): the gain is stored as w,
initialised to 0 (model/init.py reads ``zero_centered``), and applied as (1 + w), as Megatron-LM's LayerNorm1P and
Transformer Engine's zero_centered_gamma do."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config.model import ModelConfig


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32 (Zhang & Sennrich, 2019)."""

    def __init__(self, dim: int, eps: float = 1e-5, zero_centered: bool = False):
        super().__init__()
        self.eps, self.zero_centered = eps, zero_centered
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        gain = self.weight.float() + 1.0 if self.zero_centered else self.weight.float()
        return (xf * gain).to(x.dtype)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight) if self.zero_centered else nn.init.ones_(self.weight)


class LayerNorm1P(nn.LayerNorm):
    """nn.LayerNorm whose gain is stored as w and applied as (1 + w) (Megatron-LM's LayerNorm1P)."""

    zero_centered = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight + 1, self.bias, self.eps)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.zeros_(self.weight)


def build_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.hidden_size, cfg.norm_eps, zero_centered=cfg.norm_zero_centered)
    cls = LayerNorm1P if cfg.norm_zero_centered else nn.LayerNorm
    return cls(cfg.hidden_size, eps=cfg.norm_eps, bias=cfg.norm_bias)
