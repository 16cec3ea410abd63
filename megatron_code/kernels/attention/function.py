"""Attention entry point: picks the fastest exact implementation for the inputs.

Order: flash-attn (CUDA, fp16/bf16, when installed) -> torch scaled_dot_product_attention (CPU and GPU) ->
the reference. Every path computes the same function as `reference.attention_reference` (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .reference import attention_reference

try:  # optional: only on CUDA machines with flash-attn installed
    from flash_attn import flash_attn_func as _flash_attn_func  # type: ignore
except Exception:  # noqa: BLE001 - any import failure means "not available"
    _flash_attn_func = None


def _flash_ok(q: torch.Tensor, mask) -> bool:
    return (_flash_attn_func is not None and q.is_cuda and mask is None
            and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, dropout_p: float = 0.0,
              mask: torch.Tensor | None = None, impl: str = "auto", bias: torch.Tensor | None = None) -> torch.Tensor:
    """q: (B, Hq, Tq, D), k/v: (B, Hkv, Tk, D). Returns (B, Hq, Tq, D). See attention_reference for semantics.
    ``bias``: an additive float bias on the scores, broadcastable to (B, Hq, Tq, Tk) (T5's relative position bias);
    it goes through torch's SDPA with causality and ``mask`` folded in as -inf."""
    if bias is not None:
        if impl == "reference":
            raise ValueError("attention(impl='reference') takes no bias")
        impl = "sdpa"
    if impl == "reference":
        return attention_reference(q, k, v, causal=causal, dropout_p=dropout_p, mask=mask)
    if impl in ("auto", "flash") and _flash_ok(q, mask):
        # flash-attn wants (B, T, H, D) and aligns the causal mask bottom-right like we do.
        out = _flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                               dropout_p=dropout_p, causal=causal)
        return out.transpose(1, 2)
    tq, tk = q.shape[2], k.shape[2]
    hq, hkv = q.shape[1], k.shape[1]
    if hq != hkv:
        # (B, Hkv, Tk, D) -> (B, Hq, Tk, D) without copying per group until SDPA needs it.
        g = hq // hkv
        k = k[:, :, None].expand(-1, -1, g, -1, -1).reshape(k.shape[0], hq, tk, k.shape[-1])
        v = v[:, :, None].expand(-1, -1, g, -1, -1).reshape(v.shape[0], hq, tk, v.shape[-1])
    if causal and (tq != tk or mask is not None):
        # SDPA's is_causal aligns top-left; a KV-cache chunk needs bottom-right alignment. Some torch versions also
        # refuse an explicit attn_mask together with is_causal=True, so with a mask causality is folded into it.
        keep = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(diagonal=tk - tq)
        mask = keep if mask is None else (mask & keep)
        causal = False
    if tq == 1 and causal:
        causal = False  # one query attending to all keys
    if bias is not None:
        if causal:
            mask = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril()
            causal = False
        bias = bias.to(q.dtype)
        mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal)
