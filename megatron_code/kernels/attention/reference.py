"""Reference attention: the spec, the CPU fallback of last resort and the test oracle for every fused path."""

from __future__ import annotations

import math

import torch


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
                        dropout_p: float = 0.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v with the softmax in fp32.

    q: (B, Hq, Tq, D); k, v: (B, Hkv, Tk, D) with Hq % Hkv == 0 (GQA/MQA: query head h reads kv head
    h // (Hq // Hkv)). causal masks bottom-right aligned (query i of Tq sees keys <= i + Tk - Tq), which is what a
    KV cache needs. mask: optional bool (True = attend) broadcastable to (B, Hq, Tq, Tk). Returns (B, Hq, Tq, D).
    """
    b, hq, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    if hq != hkv:
        k = k.repeat_interleave(hq // hkv, dim=1)
        v = v.repeat_interleave(hq // hkv, dim=1)
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) / math.sqrt(d)  # (B, Hq, Tq, Tk)
    if causal:
        keep = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(diagonal=tk - tq)
        scores = scores.masked_fill(~keep, float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        probs = torch.nn.functional.dropout(probs, p=dropout_p)
    return torch.matmul(probs, v.float()).to(q.dtype)
