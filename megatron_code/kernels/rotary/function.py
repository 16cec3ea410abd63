"""Rotary entry point: a fused autograd function (no cat / neg / slice-backward temporaries) equal to
`reference.rotary_reference`.

Why: the reference builds cat(-x2, x1), multiplies, then cats the pass-through dims back; its backward scatters
each slice into a zero tensor. Profiled on the issue-2 benchmark model (bf16, 2 CPU cores) that was ~15% of the
step. Here the output is written once into one buffer and the backward is the inverse rotation, written out:

    out1 = x1 * c1 - x2 * s1          dx1 = g1 * c1 + g2 * s2
    out2 = x2 * c2 + x1 * s2          dx2 = g2 * c2 - g1 * s1
    out_pass = x_pass                 dx_pass = g_pass

(c1, c2 / s1, s2 are the halves of cos / sin; the forward is bitwise the reference's arithmetic.) Only cos and
sin are saved for backward, not x.
"""

from __future__ import annotations

import torch

from .reference import rotary_reference


class _Rotary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        r = cos.shape[-1]
        h = r // 2
        x1, x2 = x[..., :h], x[..., h:r]
        c1, c2, s1, s2 = cos[..., :h], cos[..., h:], sin[..., :h], sin[..., h:]
        out = torch.empty_like(x, memory_format=torch.contiguous_format)  # (B, T, H, D)
        o1, o2 = out[..., :h], out[..., h:r]
        torch.mul(x1, c1, out=o1).sub_(x2 * s1)
        torch.mul(x2, c2, out=o2).add_(x1 * s2)
        if r < x.shape[-1]:
            out[..., r:] = x[..., r:]
        ctx.save_for_backward(cos, sin)
        return out

    @staticmethod
    def backward(ctx, g):
        cos, sin = ctx.saved_tensors
        r = cos.shape[-1]
        h = r // 2
        g1, g2 = g[..., :h], g[..., h:r]
        c1, c2, s1, s2 = cos[..., :h], cos[..., h:], sin[..., :h], sin[..., h:]
        dx = torch.empty_like(g, memory_format=torch.contiguous_format)
        torch.mul(g1, c1, out=dx[..., :h]).add_(g2 * s2)
        torch.mul(g2, c2, out=dx[..., h:r]).sub_(g1 * s1)
        if r < g.shape[-1]:
            dx[..., r:] = g[..., r:]
        return dx, None, None


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """Same contract as `rotary_reference`: x (B, T, H, D), cos/sin (B or 1, T, 1, r). Returns a contiguous
    (B, T, H, D). Falls back to the reference when cos/sin need gradients or shapes need broadcasting over x."""
    if impl == "reference" or (torch.is_grad_enabled() and (cos.requires_grad or sin.requires_grad)):
        return rotary_reference(x, cos, sin)
    if cos.shape != sin.shape or cos.dim() != x.dim() or cos.shape[-1] % 2 or cos.shape[-1] > x.shape[-1]:
        return rotary_reference(x, cos, sin)
    return _Rotary.apply(x, cos, sin)
