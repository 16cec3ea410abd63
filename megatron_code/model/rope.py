"""Rotary position embeddings (Su et al., 2021), half-split ("rotate_half", GPT-NeoX/Llama convention), partial:
only the first `rotary_dims` dims of each head rotate, the rest pass through (GPT-NeoX rotary_pct, phi-1's 32)."""

from __future__ import annotations

import torch

from ..kernels.rotary import rotary


def rotary_inv_freq(rotary_dims: int, base: float, device=None) -> torch.Tensor:
    """(rotary_dims / 2,) inverse frequencies base^(-2i / rotary_dims)."""
    return 1.0 / (base ** (torch.arange(0, rotary_dims, 2, dtype=torch.float32, device=device) / rotary_dims))


def rotary_cos_sin(position_ids: torch.Tensor, rotary_dims: int, base: float,
                   dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """position_ids (B, T) -> cos, sin of shape (B, T, 1, rotary_dims), angles computed in fp32."""
    inv_freq = rotary_inv_freq(rotary_dims, base, position_ids.device)
    angles = position_ids.float()[..., None] * inv_freq  # (B, T, r/2)
    angles = torch.cat((angles, angles), dim=-1)[:, :, None, :]  # (B, T, 1, r)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, T, H, D); cos/sin (B, T, 1, r) with r <= D even. Rotates x[..., :r] as pairs (i, i + r/2).

    Runs the fused kernel (megatron_code.kernels.rotary); its reference, rotary_reference, is the formula."""
    return rotary(x, cos, sin)
