"""Training losses: causal LM cross-entropy and the Meet-in-the-Middle loss, optionally on vocab-parallel logits.

Tensor parallelism. With ``tp_group`` set, ``logits`` are the local vocabulary shard (B, S, V/tp) of rank r,
covering ids ``[r * V/tp, (r+1) * V/tp)`` (Megatron's equal split). Nothing gathers the vocabulary: log-softmax
uses an all-reduced max and sum of exponentials, and every per-token quantity that sums over the vocabulary
(target log-probability, TV, JS, KL, L2) is a local partial sum followed by an all-reduce. Two autograd rules make
the gradients exact, with the loss replicated on every rank of the group (Megatron's convention):

* the final partial-sum all-reduce has an identity backward (``_reduce_replicated``): each rank's loss is the
  whole loss, so its gradient w.r.t. the local partial sum is already complete;
* the log-softmax normaliser couples all shards, so ``_VocabParallelLogSoftmax`` computes
  ``dx = g - softmax(x) * sum_v g_v`` with ``sum_v`` all-reduced over the group.

All losses are computed in at least float32 (half/bfloat16 logits are upcast; float64 stays float64).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..errors import UserError

__all__ = ["causal_lm_loss", "masked_mean_weights", "mim_loss", "split_directions", "vocab_parallel_log_softmax",
           "token_divergence", "DIVERGENCES", "LossError", "vocab_logsumexp", "z_loss_term", "per_token_scale",
           "read_step_for_per_token_loss"]

DIVERGENCES = ("tv", "js", "kl", "rkl", "l2")
_LOG2 = 0.6931471805599453


class LossError(UserError, ValueError):
    """A user-fixable loss configuration problem (unknown divergence, bad stop_grad, shape mismatch)."""


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.is_floating_point() and x.element_size() < 4 else x


class _ReduceReplicated(torch.autograd.Function):
    """All-reduce (sum) whose result feeds a loss replicated on every rank: backward is the identity."""

    @staticmethod
    def forward(ctx, x, group):
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _reduce_replicated(x: torch.Tensor, group) -> torch.Tensor:
    return x if group is None else _ReduceReplicated.apply(x, group)


class _VocabParallelLogSoftmax(torch.autograd.Function):
    """log_softmax over a vocabulary split across ``group``; input and output are the local shard (..., V/tp)."""

    @staticmethod
    def forward(ctx, logits, group):
        x = _upcast(logits)
        x_max = x.max(dim=-1, keepdim=True).values  # (..., 1) local max, then global
        dist.all_reduce(x_max, op=dist.ReduceOp.MAX, group=group)
        shifted = x - x_max
        sum_exp = shifted.exp().sum(dim=-1, keepdim=True)  # (..., 1)
        dist.all_reduce(sum_exp, op=dist.ReduceOp.SUM, group=group)
        logp = shifted - sum_exp.log()
        ctx.group = group
        ctx.in_dtype = logits.dtype
        ctx.save_for_backward(logp)
        return logp

    @staticmethod
    def backward(ctx, grad):
        (logp,) = ctx.saved_tensors
        total = grad.sum(dim=-1, keepdim=True)  # sum over the full vocabulary = all-reduce of shard sums
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        return (grad - logp.exp() * total).to(ctx.in_dtype), None


def vocab_parallel_log_softmax(logits: torch.Tensor, tp_group=None) -> torch.Tensor:
    """Log-softmax (at least float32) over the last dim; with ``tp_group`` that dim is this rank's vocab shard."""
    if tp_group is None:
        return torch.log_softmax(_upcast(logits), dim=-1)
    return _VocabParallelLogSoftmax.apply(logits, tp_group)


def _target_logprob(logp: torch.Tensor, labels: torch.Tensor, tp_group) -> torch.Tensor:
    """(B, S) log-probability of ``labels`` from (B, S, V or V/tp) log-probs."""
    if tp_group is None:
        return logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    v_local = logp.shape[-1]
    start = dist.get_rank(tp_group) * v_local
    local = labels - start
    inside = (local >= 0) & (local < v_local)
    picked = logp.gather(-1, local.clamp(0, v_local - 1).unsqueeze(-1)).squeeze(-1)
    return _reduce_replicated(torch.where(inside, picked, torch.zeros_like(picked)), tp_group)


def masked_mean_weights(mask: torch.Tensor, token_scale: Optional[float] = None) -> torch.Tensor:
    """Weights w with sum(w * values) = the masked mean of values over ``mask`` (0 for an empty mask): the
    ``loss_weights`` of the fused head + loss (GPT.forward(labels=, loss_weights=)). With ``token_scale`` (per-token
    loss, ``per_token_scale``): the masked sum times ``token_scale`` instead of the mean."""
    mask = mask.float()
    return mask * token_scale if token_scale is not None else mask / mask.sum().clamp(min=1.0)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor, token_scale: Optional[float] = None) -> torch.Tensor:
    """Mean of ``values`` over ``mask`` positions; 0 (with zero gradient) when the mask is empty. With
    ``token_scale``: the masked sum times it (Megatron's --calculate-per-token-loss, see ``per_token_scale``)."""
    mask = mask.to(values.dtype)
    if token_scale is not None:
        return (values * mask).sum() * token_scale
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def per_token_scale(global_tokens: float, accum: int, dp_size: int) -> float:
    """The factor that turns one micro batch's masked loss *sum* into Megatron-LM's per-token loss.

    Megatron-LM's --calculate-per-token-loss (megatron/core/pipeline_parallel/schedules.py, finalize_model_grads):
    each micro batch contributes the sum of its token losses, gradients are summed (not averaged) over micro
    batches and data-parallel ranks, then divided by the number of non-masked tokens of the whole global batch.
    Our engine divides the accumulated gradient by ``accum`` and averages it over DP, so each micro batch's loss is
    ``sum * accum * dp / global_tokens``: the gradient is then ``sum over all tokens of grad(loss_t) / N``, and the
    mean of the micro-batch losses over the step and DP ranks -- the logged loss -- is ``sum / N``, the token mean
    of the global batch. An all-masked global batch contributes nothing (Megatron skips the scaling: its gradient
    is zero)."""
    return accum * dp_size / global_tokens if global_tokens > 0 else 0.0


def read_step_for_per_token_loss(batches, accum: int, dp_group, dp_size: int, device) -> tuple[list, float]:
    """(this step's ``accum`` micro batches, read ahead from ``batches``; their ``per_token_scale``): the count of
    non-masked tokens is summed over the micro batches and all-reduced over the data-parallel group."""
    micro = [next(batches) for _ in range(accum)]
    n = torch.tensor(float(sum(float(b["loss_mask"].sum()) for b in micro)), dtype=torch.float64)
    if dp_size > 1:
        n = n.to(device)
        dist.all_reduce(n, group=dp_group)
    return micro, per_token_scale(float(n), accum, dp_size)


def _check_labels(logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor) -> None:
    if logits.dim() != 3 or labels.shape != logits.shape[:2] or loss_mask.shape != labels.shape:
        raise LossError(f"expected logits (B, S, V), labels and loss_mask (B, S); got {tuple(logits.shape)}, "
                        f"{tuple(labels.shape)}, {tuple(loss_mask.shape)}")


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor,
                   tp_group=None, token_scale: Optional[float] = None) -> torch.Tensor:
    """Mean next-token cross-entropy over ``loss_mask`` positions (float32 scalar).

    ``logits`` (B, S, V) -- or the local vocabulary shard (B, S, V/tp) with ``tp_group`` --, ``labels`` (B, S)
    long, ``loss_mask`` (B, S) in {0, 1}. Returns 0 when the mask is empty. With ``token_scale`` the masked sum
    times it (per-token loss, ``per_token_scale``).
    """
    _check_labels(logits, labels, loss_mask)
    if tp_group is None:
        # Fast path, same math (log_softmax + pick the target): torch's fused cross_entropy skips the (B, S, V)
        # gather-backward scatter into a zero tensor that the generic path pays.
        nll = F.cross_entropy(_upcast(logits).flatten(0, 1), labels.flatten(), reduction="none")  # (B*S,)
        return _masked_mean(nll.view_as(labels), loss_mask, token_scale)
    logp = vocab_parallel_log_softmax(logits, tp_group)
    return _masked_mean(-_target_logprob(logp, labels, tp_group), loss_mask, token_scale)


def vocab_logsumexp(logits: torch.Tensor, tp_group=None) -> torch.Tensor:
    """log Z = logsumexp over the (possibly sharded) vocabulary, (B, S, V or V/tp) -> (B, S), differentiable."""
    x = _upcast(logits)
    x_max = x.detach().amax(dim=-1, keepdim=True)
    if tp_group is not None:
        dist.all_reduce(x_max, op=dist.ReduceOp.MAX, group=tp_group)
    return x_max.squeeze(-1) + _vocab_sum((x - x_max).exp(), tp_group).log()


def z_loss_term(logits: torch.Tensor, loss_mask: torch.Tensor, coeff: float, tp_group=None,
                token_scale: Optional[float] = None) -> torch.Tensor:
    """PaLM's auxiliary z-loss (Chowdhery et al. 2022, sec. 5): coeff * log^2 Z averaged like the loss (over
    ``loss_mask``), which keeps the softmax normaliser near 1 (log Z near 0) for stability."""
    return coeff * _masked_mean(vocab_logsumexp(logits, tp_group) ** 2, loss_mask, token_scale)


def _vocab_sum(x: torch.Tensor, tp_group) -> torch.Tensor:
    """Sum over the (possibly sharded) vocabulary: local sum, then all-reduce. (B, S, V/tp) -> (B, S)."""
    return _reduce_replicated(x.sum(dim=-1), tp_group)


def token_divergence(logp: torch.Tensor, logq: torch.Tensor, kind: str = "tv", tp_group=None) -> torch.Tensor:
    """Per-position divergence (B, S) between p = exp(logp) and q = exp(logq), each (B, S, V or V/tp).

    tv:  0.5 * sum_v |p - q|                                   (total variation, in [0, 1])
    js:  0.5 * KL(p || m) + 0.5 * KL(q || m), m = (p + q) / 2  (Jensen-Shannon, nats, in [0, log 2])
    kl:  KL(p || q) = sum_v p (log p - log q)                  (forward model p against backward q)
    rkl: KL(q || p)
    l2:  sum_v (p - q)^2                                       (squared Euclidean distance)
    """
    if kind not in DIVERGENCES:
        raise LossError(f"unknown MIM divergence '{kind}': use one of {', '.join(DIVERGENCES)} (--mim-divergence)")
    p, q = logp.exp(), logq.exp()
    if kind == "tv":
        return 0.5 * _vocab_sum((p - q).abs(), tp_group)
    if kind == "l2":
        return _vocab_sum((p - q).square(), tp_group)
    if kind == "kl":
        return _vocab_sum(p * (logp - logq), tp_group)
    if kind == "rkl":
        return _vocab_sum(q * (logq - logp), tp_group)
    logm = torch.logaddexp(logp, logq) - _LOG2  # log((p + q) / 2) without underflow
    return 0.5 * _vocab_sum(p * (logp - logm) + q * (logq - logm), tp_group)


def split_directions(logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the model output for a MIM batch's ``input_ids`` (2B, S, V[/tp]) into (forward (B, S, V[/tp]),
    backward (B, S, V[/tp])); B is ``batch["batch_size"]`` (``data.objectives.mim.mim_batch``)."""
    B = batch["batch_size"]
    if logits.shape[0] != 2 * B:
        raise LossError(f"logits batch {logits.shape[0]} is not twice the MIM batch size {B}")
    return logits[:B], logits[B:]


def mim_loss(logits_fwd: torch.Tensor, logits_bwd: torch.Tensor, batch: dict, beta: float,
             divergence: str = "tv", stop_grad: Optional[str] = None, tp_group=None) -> tuple[torch.Tensor, dict]:
    """Meet-in-the-Middle loss: ``fwd_ce + bwd_ce + beta * agreement`` (Nguyen et al., 2023).

    ``logits_fwd``/``logits_bwd`` (B, S, V or V/tp) are the model outputs for the forward and backward rows of
    ``batch`` (from ``data.objectives.mim.mim_batch``; ``split_directions`` splits a (2B, S, V) output).
    ``agreement`` is the mean over ``batch["agree_mask"]`` of the divergence between the forward distribution at
    position i and the backward distribution at ``batch["align_index"][i]`` (same target token).
    ``stop_grad`` "fwd" / "bwd" detaches that side inside the agreement term only (its CE still trains it).
    ``divergence`` is one of DIVERGENCES (formulas in ``token_divergence``); the agreement is always computed so
    it can be logged, and with ``beta == 0`` it adds nothing to ``total``.
    Returns ``(total, {"fwd_ce", "bwd_ce", "agreement"})``; the dict values are detached scalars for logging.
    """
    kind = divergence
    if kind not in DIVERGENCES:
        raise LossError(f"unknown MIM divergence '{kind}': use one of {', '.join(DIVERGENCES)} (--mim-divergence)")
    if stop_grad not in (None, "fwd", "bwd"):
        raise LossError(f"mim stop_grad must be None, 'fwd' or 'bwd', got '{stop_grad}'")
    B = batch["batch_size"]
    labels, mask = batch["labels"], batch["loss_mask"]
    _check_labels(logits_fwd, labels[:B], mask[:B])
    _check_labels(logits_bwd, labels[B:], mask[B:])
    logp = vocab_parallel_log_softmax(logits_fwd, tp_group)  # (B, S, V[/tp])
    logq = vocab_parallel_log_softmax(logits_bwd, tp_group)
    fwd_ce = _masked_mean(-_target_logprob(logp, labels[:B], tp_group), mask[:B])
    bwd_ce = _masked_mean(-_target_logprob(logq, labels[B:], tp_group), mask[B:])
    total = fwd_ce + bwd_ce
    # With beta 0 the agreement is only logged: no graph, no activation memory for it.
    with torch.set_grad_enabled(torch.is_grad_enabled() and beta != 0.0):
        a_p = logp.detach() if stop_grad == "fwd" else logp
        # (B, S, V[/tp]): backward log-probs re-ordered so position i has the same target as forward position i
        a_q = (logq.detach() if stop_grad == "bwd" else logq).index_select(1, batch["align_index"])
        agreement = _masked_mean(token_divergence(a_p, a_q, kind, tp_group), batch["agree_mask"])
    if beta != 0.0:
        total = total + beta * agreement
    return total, {"fwd_ce": fwd_ce.detach(), "bwd_ce": bwd_ce.detach(), "agreement": agreement.detach()}

