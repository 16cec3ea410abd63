"""Vocab-parallel cross entropy: the loss over logits whose vocabulary is split across TP ranks, without ever
materializing full-vocabulary logits on any rank.

Rank r holds logits for ids [r*V/tp, (r+1)*V/tp) (Megatron's equal split, matching VocabParallelEmbedding and
the column-parallel head). Per token:  loss = log(sum_v exp(z_v - m)) - (z_label - m), with m the global max
(all-reduce MAX), the sum of exponentials and the label's logit all-reduced (SUM) over the TP group. The
backward is fused (softmax - one_hot, only the local slice), so the saved state is one (B, T, V/tp) tensor.
The returned loss is replicated on every TP rank; its gradient w.r.t. the local logits is exact.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.distributed as dist

from . import mappings as M

IGNORE_INDEX = -100


class _VocabParallelCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, group, ignore_index):
        x = logits.float()  # (B, T, V/tp); computed in fp32 whatever the logits' dtype
        v_local = x.shape[-1]
        start = M.group_rank(group) * v_local
        m = x.max(dim=-1, keepdim=True).values
        m = M.all_reduce(m, group, op=dist.ReduceOp.MAX)
        x = x - m
        local = labels - start
        inside = (local >= 0) & (local < v_local) & (labels != ignore_index)  # label's logit lives on this rank
        idx = local.clamp(0, v_local - 1).unsqueeze(-1)
        target = torch.where(inside, x.gather(-1, idx).squeeze(-1), torch.zeros_like(x[..., 0]))
        target = M.all_reduce(target, group)
        e = x.exp()
        sum_exp = M.all_reduce(e.sum(dim=-1), group)  # (B, T)
        valid = labels != ignore_index
        loss = torch.where(valid, sum_exp.log() - target, torch.zeros_like(target))
        softmax = e.div_(sum_exp.unsqueeze(-1))
        ctx.save_for_backward(softmax, idx, inside, valid)
        ctx.in_dtype = logits.dtype
        return loss

    @staticmethod
    def backward(ctx, g):
        softmax, idx, inside, valid = ctx.saved_tensors
        grad = softmax  # saved only for this backward: reuse its memory
        grad.scatter_add_(-1, idx, -inside.to(grad.dtype).unsqueeze(-1))
        grad.mul_((g * valid.to(g.dtype)).unsqueeze(-1))
        return grad.to(ctx.in_dtype), None, None, None


def vocab_parallel_cross_entropy(logits_local: torch.Tensor, labels: torch.Tensor, tp_group=None,
                                 ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Per-token cross entropy (B, T) float32 from this rank's vocabulary shard of the logits (B, T, V/tp).

    `labels` (B, T) hold GLOBAL token ids (identical on all TP ranks); positions equal to `ignore_index` get loss
    0 and no gradient. With `tp_group` None or of size 1 this is ordinary cross entropy."""
    if logits_local.dim() != labels.dim() + 1 or logits_local.shape[:-1] != labels.shape:
        raise ValueError(f"expected logits (..., V_local) and labels (...); got {tuple(logits_local.shape)} and "
                         f"{tuple(labels.shape)}")
    return _VocabParallelCE.apply(logits_local, labels, tp_group, ignore_index)


def parallel_lm_loss(logits_local: torch.Tensor, labels: torch.Tensor, loss_mask: Optional[torch.Tensor] = None,
                     tp_group=None) -> torch.Tensor:
    """Mean next-token loss over `loss_mask` positions (all positions when None) from vocab-sharded logits:
    the same value as `training.losses.causal_lm_loss` on the full logits (0 when the mask is empty)."""
    per_token = vocab_parallel_cross_entropy(logits_local, labels, tp_group)
    if loss_mask is None:
        return per_token.mean()
    mask = loss_mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


def make_loss_fn(tp_group) -> Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]:
    """`loss_fn(logits_local, labels, loss_mask)` bound to a TP group, for the trainer / pipeline engine."""

    def loss_fn(logits_local, labels, loss_mask=None):
        return parallel_lm_loss(logits_local, labels, loss_mask, tp_group)

    return loss_fn
