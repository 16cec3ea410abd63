"""Reference rotary embedding (half-split "rotate_half", GPT-NeoX/Llama convention, partial): the spec and the
test oracle of the fused path in function.py."""

from __future__ import annotations

import torch


def rotary_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, T, H, D); cos/sin broadcastable to (B, T, 1, r), r <= D even. Rotates x[..., :r] as pairs
    (i, i + r/2): out = x_rot * cos + cat(-x2, x1) * sin; x[..., r:] passes through unchanged."""
    r = cos.shape[-1]
    x_rot, x_pass = x[..., :r], x[..., r:]
    half = r // 2
    rotated = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)
    out = x_rot * cos + rotated * sin
    return torch.cat((out, x_pass), dim=-1) if x_pass.shape[-1] else out
