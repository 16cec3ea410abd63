"""Spec and test oracle for the fused LM head + cross-entropy: materialise the logits, then cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_cross_entropy_reference(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                   labels: torch.Tensor, weights: torch.Tensor, z_loss: float = 0.0,
                                   return_z: bool = False):
    """``sum_i weights_i * (nll_i + z_loss * logsumexp(z_i)^2)`` with ``nll_i = logsumexp(z_i) - z_i[labels_i]``,
    ``z = hidden @ weight.T + bias`` (with ``return_z``: also the z_loss part).

    hidden (N, H), weight (V, H), bias (V,) or None, labels (N,) long in [0, V), weights (N,) float.
    The logits are computed in the input dtype (as ``nn.Linear`` would) and scored in float32 (float64 stays).
    Returns a 0-dim tensor in the scoring dtype.
    """
    z = F.linear(hidden, weight, bias)  # (N, V) in the input dtype
    if z.element_size() < 4:
        z = z.float()
    nll = F.cross_entropy(z, labels, reduction="none")  # (N,)
    w = weights.to(nll.dtype)
    total = (nll * w).sum()
    z_part = z_loss * (torch.logsumexp(z, dim=-1) ** 2 * w).sum() if z_loss else torch.zeros_like(total)
    return (total + z_part, z_part) if return_z else total + z_part
