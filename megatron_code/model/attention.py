"""Causal self-attention with MHA / GQA / MQA, optional (partial) rotary, and a KV cache for generation.

Projections are separate named modules (q_proj, k_proj, v_proj, o_proj) so tensor-parallel plans can shard them
by name. Head counts are read from the projection output sizes at run time, never from the config, so a
column-sharded q_proj with H/tp heads just works.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config.model import ModelConfig
from ..kernels import attention as attention_kernel
from .rope import apply_rotary


class LayerKVCache:
    """Keys/values of one layer for batched decoding: (B, Hkv, max_len, D), filled up to `length`."""

    def __init__(self, batch: int, kv_heads: int, max_len: int, head_dim: int, dtype, device):
        self.k = torch.zeros(batch, kv_heads, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = k.shape[2]
        if self.length + t > self.k.shape[2]:
            raise ValueError(f"KV cache full: {self.length} + {t} > {self.k.shape[2]} positions; "
                             "raise max_len when creating the cache")
        self.k[:, :, self.length:self.length + t] = k
        self.v[:, :, self.length:self.length + t] = v
        self.length += t
        return self.k[:, :, :self.length], self.v[:, :, :self.length]

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows (beam/contrastive search bookkeeping)."""
        self.k = self.k.index_select(0, index)
        self.v = self.v.index_select(0, index)


def t5_bucket(relative: torch.Tensor, buckets: int, max_distance: int) -> torch.Tensor:
    """T5's unidirectional relative-position bucket of key - query (Raffel et al., 2020; its
    `_relative_position_bucket(bidirectional=False)`): distances n = max(query - key, 0) below buckets / 2 get their
    own bucket; larger ones share log-spaced buckets up to max_distance, then the last bucket."""
    n = (-relative).clamp(min=0)
    exact = buckets // 2
    large = exact + (torch.log(n.float().clamp(min=1) / exact) / math.log(max_distance / exact)
                     * (buckets - exact)).long()
    return torch.where(n < exact, n, large.clamp(max=buckets - 1))


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.head_dim = cfg.head_dim
        self.dropout_p = cfg.attention_dropout
        self.drophead = cfg.drophead
        q_out = cfg.num_attention_heads * cfg.head_dim
        kv_out = cfg.num_kv_heads * cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, q_out, bias=cfg.bias)
        self.k_proj = nn.Linear(cfg.hidden_size, kv_out, bias=cfg.bias)
        self.v_proj = nn.Linear(cfg.hidden_size, kv_out, bias=cfg.bias)
        self.o_proj = nn.Linear(q_out, cfg.hidden_size, bias=cfg.bias)
        if cfg.position_embedding == "t5":
            self.rel_bias = nn.Embedding(cfg.t5_buckets, cfg.num_attention_heads)
            self.t5 = (cfg.t5_buckets, cfg.t5_max_distance)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: LayerKVCache | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, hidden) -> (B, T, hidden). rope: (cos, sin) for these T positions. mask: optional bool
        (B, 1, T, T_total) extra mask (True = attend), combined with causality."""
        b, t, _ = x.shape
        d = self.head_dim
        q = self.q_proj(x).view(b, t, -1, d)  # (B, T, Hq_local, D)
        k = self.k_proj(x).view(b, t, -1, d)  # (B, T, Hkv_local, D)
        v = self.v_proj(x).view(b, t, -1, d)
        if rope is not None:
            q = apply_rotary(q, *rope)
            k = apply_rotary(k, *rope)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        if cache is not None:
            k, v = cache.append(k, v)
        dropout = self.dropout_p if self.training else 0.0
        bias = None
        if hasattr(self, "rel_bias"):  # T5: bias[h, i, j] from the bucket of (key j - query i)
            tk = k.shape[2]
            rel = torch.arange(tk, device=x.device)[None, :] - torch.arange(tk - t, tk, device=x.device)[:, None]
            bias = self.rel_bias(t5_bucket(rel, *self.t5)).permute(2, 0, 1)[None]  # (1, H, T, Tk)
        out = attention_kernel(q, k, v, causal=True, dropout_p=dropout, mask=mask, bias=bias)  # (B, Hq_local, T, D)
        if self.training and self.drophead > 0:  # DropHead: whole heads per sample, kept ones rescaled
            keep = torch.rand(out.shape[0], out.shape[1], 1, 1, device=out.device) >= self.drophead
            out = out * keep.to(out.dtype) / (1.0 - self.drophead)
        out = out.transpose(1, 2).reshape(b, t, -1)
        return self.o_proj(out)
