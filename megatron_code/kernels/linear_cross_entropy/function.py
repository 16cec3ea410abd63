"""Fused LM head + cross-entropy: no float32 copy of the (N, V) logits, nothing of size (N, V) kept for backward.

Why: for a causal-LM step the head's logits are the largest activation (2,048 tokens x 8,192 vocab is 16.7M
values; at PaLM's 256k vocabulary one 2,048-token sequence is 537M). The unfused path writes them in the compute
dtype, again upcast to float32, again as log-softmax saved for backward, then a float32 and a compute-dtype
gradient, and reads each back. Profiled on issue 2's bf16 benchmark model on 2 CPU cores, head + loss was ~25% of
the step.

Here, per block of rows (all N rows unless their logits would pass ``_BLOCK_BYTES`` in the compute dtype):

    z = hidden @ weight.T + bias                       one big matmul, compute dtype, (rows, V)
    for each cache-sized chunk of rows (~8 MB of float32):
        float32 copy -> max -> exp (once) -> sum -> loss terms
        d z = weights_i * (softmax(z_i) - onehot(labels_i))   written back over z, in the compute dtype
    d hidden = d z @ weight     d weight (+)= d z^T @ hidden     d bias (+)= sum_i d z_i (float32)

With ``z_loss`` = c > 0 each row adds c * lse_i^2 (lse_i = log Z_i, the softmax normaliser; PaLM's auxiliary loss,
Chowdhery et al. 2022 sec. 5, c = 1e-4), whose gradient c * 2 lse_i * softmax(z_i) joins the softmax term: the
row's softmax is scaled by w_i (1 + 2 c lse_i) instead of w_i. The z part of the sum is returned on request.

The loss is a weighted *sum* (its gradient with respect to nll_i is ``weights_i`` times the scalar upstream
gradient), so the gradients are formed in the forward pass and backward only scales them by the upstream scalar.
The three matmuls are the unfused path's three, at full size (small row chunks made the ``d weight`` update a
rank-c product plus a full (V, H) read-modify-write per chunk: 2x slower than unfused at V = 51,200, H = 1,024).
With one block, ``d weight`` is a single matmul rounded once, like the unfused path's; with several, the blocks'
products are summed in float32.

Contract: the value equals `reference.linear_cross_entropy_reference` up to float32 summation order (same per-row
arithmetic: logits in the input dtype, scored in float32); gradients equal up to rounding of the compute dtype.

Vocabulary shards (tensor parallelism, `VocabShard`): each rank holds a contiguous slice of the head's rows and
scores only its columns of the logits. Per block the row max (all-reduce MAX) and then the sum of exponentials and
the label's logit (one all-reduce SUM of a (2, rows) tensor) are combined over the shard group, so every rank gets
the same loss. The softmax needs the global sum, known only after the first pass, so below float32 a second exp
pass recomputes exp(z - max) per chunk (in float32/64 the first pass leaves it in z). The hidden gradient is this
shard's part: the caller sums it over the group (in the model, the TP region entry before the final norm's output
does, as for the unfused column-parallel head).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .reference import linear_cross_entropy_reference

_CHUNK_BYTES = 8 << 20  # float32 logits per softmax chunk (cache-sized)
_BLOCK_BYTES = 1 << 30  # compute-dtype logits per block (the one (rows, V) buffer this function holds)


@dataclass(frozen=True)
class VocabShard:
    """This rank's head holds vocabulary rows [start, start + V_local); labels are global ids. ``all_reduce(t, op)``
    (op "max" or "sum") returns ``t`` reduced over the ranks holding the other rows (every rank calls it with the
    same shapes, in the same order)."""

    start: int
    all_reduce: Callable[[torch.Tensor, str], torch.Tensor]


def default_chunk_rows(vocab: int) -> int:
    """Rows per softmax chunk: ~8 MB of float32 logits, at least 16 and at most 4,096 rows."""
    return max(16, min(4096, _CHUNK_BYTES // (4 * max(1, vocab))))


def default_block_rows(vocab: int, element_size: int) -> int:
    """Rows per block: logits of at most ~1 GiB in the compute dtype, at least 256 rows (matmul efficiency)."""
    return max(256, _BLOCK_BYTES // (element_size * max(1, vocab)))


def _score_block(z: torch.Tensor, labels: torch.Tensor, w: torch.Tensor, chunk_rows: int, grad: bool,
                 d_bias: torch.Tensor | None, score: torch.dtype, z_loss: float = 0.0,
                 z_total: torch.Tensor | None = None) -> torch.Tensor:
    """z (R, V) logits of one block in the compute dtype; returns sum_i w_i * (nll_i + z_loss lse_i^2) (0-dim,
    ``score`` dtype), adding the z_loss part to ``z_total``. With ``grad``, z is overwritten by d loss / d z
    (compute dtype) and d_bias (if given) accumulates it."""
    total = torch.zeros((), dtype=score, device=z.device)
    for s in range(0, z.shape[0], chunk_rows):
        e = min(z.shape[0], s + chunk_rows)
        y, w_c = labels[s:e, None], w[s:e]
        zc = z[s:e].to(score)  # (c, V): a float32 copy (or z itself when z is already float32/64)
        target = zc.gather(1, y).squeeze(1)  # (c,)
        z_max = zc.amax(dim=-1, keepdim=True)  # (c, 1): logsumexp by hand, one exp pass reused for softmax
        sum_exp = zc.sub_(z_max).exp_().sum(dim=-1, keepdim=True)  # zc now holds exp(z - max)
        lse = z_max.squeeze(1) + sum_exp.squeeze(1).log()  # (c,)
        total += ((lse - target) * w_c).sum()
        soft = w_c
        if z_loss:
            z_part = z_loss * (lse * lse * w_c).sum()
            total += z_part
            z_total += z_part
            soft = w_c * (1.0 + 2.0 * z_loss * lse)
        if not grad:
            continue
        g = zc.mul_(soft[:, None] / sum_exp)  # w_i (1 + 2 c lse_i) * softmax(z_i) ...
        g.scatter_add_(1, y, -w_c[:, None])  # ... - w_i * onehot(label_i)
        if d_bias is not None:
            d_bias += g.sum(0)
        if z.dtype != score:  # (in float32/64, zc is a view of z and g already lies in it)
            z[s:e].copy_(g)  # back into the block buffer, in the compute dtype
    return total


def _score_block_sharded(z: torch.Tensor, labels: torch.Tensor, w: torch.Tensor, chunk_rows: int, grad: bool,
                         d_bias: torch.Tensor | None, score: torch.dtype, shard: VocabShard, z_loss: float = 0.0,
                         z_total: torch.Tensor | None = None) -> torch.Tensor:
    """`_score_block` for a vocabulary shard: z (R, V_local) holds this rank's columns of the logits. Returns the
    block's sum_i w_i * nll_i, the same on every rank of the shard group."""
    rows, v_local = z.shape
    local = labels - shard.start
    inside = (local >= 0) & (local < v_local)  # (R,): the label's column is on this rank
    idx = local.clamp(0, v_local - 1)[:, None]  # (R, 1)
    z_max = shard.all_reduce(z.amax(dim=-1).to(score), "max")  # (R,) global row max (exact in any dtype)
    stats = torch.zeros(2, rows, dtype=score, device=z.device)  # this shard's sum of exp(z - max), label logit
    in_place = z.dtype == score  # z[s:e].to(score) is then z itself: exp(z - max) stays in z for the second pass
    for s in range(0, rows, chunk_rows):
        e = min(rows, s + chunk_rows)
        zc = z[s:e].to(score)
        stats[1, s:e] = torch.where(inside[s:e], zc.gather(1, idx[s:e]).squeeze(1), 0.0)
        stats[0, s:e] = zc.sub_(z_max[s:e, None]).exp_().sum(dim=-1)
    sum_exp, target = shard.all_reduce(stats, "sum")
    lse = z_max + sum_exp.log()  # (R,) the whole vocabulary's, on every rank
    total = ((lse - target) * w).sum()
    soft = w
    if z_loss:
        z_part = z_loss * (lse * lse * w).sum()
        total = total + z_part
        z_total += z_part
        soft = w * (1.0 + 2.0 * z_loss * lse)
    if not grad:
        return total
    scale = soft / sum_exp  # (R,)
    w_in = (w * inside.to(score))[:, None]  # (R, 1): the one-hot term, on the label's rank only
    for s in range(0, rows, chunk_rows):
        e = min(rows, s + chunk_rows)
        ex = z[s:e] if in_place else z[s:e].to(score).sub_(z_max[s:e, None]).exp_()
        g = ex.mul_(scale[s:e, None])  # w_i * softmax(z_i) on this shard's columns ...
        g.scatter_add_(1, idx[s:e], -w_in[s:e])  # ... - w_i * onehot(label_i) where the label lives here
        if d_bias is not None:
            d_bias += g.sum(0)
        if not in_place:
            z[s:e].copy_(g)
    return total


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, weights, chunk_rows, block_rows, shard, z_loss):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        need_b = need_b and bias is not None
        grad = need_h or need_w or need_b
        score = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        n = hidden.shape[0]
        blocks = [(s, min(n, s + block_rows)) for s in range(0, n, block_rows)]
        d_hidden = torch.empty_like(hidden) if need_h else None  # (N, H)
        d_weight = None  # (V, H): the matmul's result with one block, a float32 sum with several
        if need_w and len(blocks) > 1:
            d_weight = torch.zeros(weight.shape, dtype=score, device=weight.device)
        d_bias = torch.zeros(weight.shape[0], dtype=score, device=weight.device) if need_b else None  # (V,)
        total = torch.zeros((), dtype=score, device=hidden.device)
        z_total = torch.zeros((), dtype=score, device=hidden.device)
        w = weights.to(score)
        for s, e in blocks:
            z = F.linear(hidden[s:e], weight, bias)  # (R, V), compute dtype
            if shard is None:
                total += _score_block(z, labels[s:e], w[s:e], chunk_rows, grad, d_bias, score, z_loss, z_total)
            else:
                total += _score_block_sharded(z, labels[s:e], w[s:e], chunk_rows, grad, d_bias, score, shard,
                                              z_loss, z_total)
            if need_h:
                torch.mm(z, weight, out=d_hidden[s:e])
            if need_w and len(blocks) == 1:
                d_weight = z.t() @ hidden
            elif need_w:
                d_weight += z.t() @ hidden[s:e]
        ctx.save_for_backward(d_hidden, d_weight, d_bias)
        ctx.param_dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        ctx.mark_non_differentiable(z_total)
        return total, z_total

    @staticmethod
    def backward(ctx, grad, _grad_z):
        d_hidden, d_weight, d_bias = ctx.saved_tensors
        w_dtype, b_dtype = ctx.param_dtypes
        return (None if d_hidden is None else d_hidden * grad.to(d_hidden.dtype),
                None if d_weight is None else (d_weight * grad).to(w_dtype),
                None if d_bias is None else (d_bias * grad).to(b_dtype),
                None, None, None, None, None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         labels: torch.Tensor, weights: torch.Tensor, *, chunk_rows: int | None = None,
                         block_rows: int | None = None, impl: str = "auto",
                         vocab_shard: VocabShard | None = None, z_loss: float = 0.0, return_z: bool = False):
    """``sum_i weights_i * CE(hidden_i @ weight.T + bias, labels_i)`` as a 0-dim float32 tensor (float64 for
    float64 inputs). hidden (N, H), weight (V, H), bias (V,) or None, labels (N,) long, weights (N,).

    For a mean over a loss mask pass ``weights = mask / mask.sum()``. impl: "auto"/"fused" (see the module
    docstring; ``chunk_rows`` / ``block_rows`` override the sizes) or "reference" (materialised float32 logits).
    "auto" takes the reference for fp16: there the gradient formed before loss scaling would underflow.

    ``vocab_shard``: ``weight``/``bias`` are this rank's rows of a vocabulary-sharded head (see ``VocabShard``);
    the loss is the whole-vocabulary loss on every rank, the hidden gradient this shard's part (sum it over the
    group). The reference needs the whole vocabulary, so fp16 and impl="reference" are refused with a shard.

    ``z_loss`` = c adds ``sum_i weights_i * c * logsumexp(z_i)^2`` (PaLM's z-loss); ``return_z`` returns
    ``(total, z part)`` with the z part detached, for logging."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"expected hidden (N, H) and weight (V, H), got {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}")
    if labels.shape != hidden.shape[:1] or weights.shape != hidden.shape[:1]:
        raise ValueError(f"labels and weights must be (N,) = ({hidden.shape[0]},), got {tuple(labels.shape)} and "
                         f"{tuple(weights.shape)}")
    if impl not in ("auto", "fused", "reference"):
        raise ValueError(f"unknown impl {impl!r}: use 'auto', 'fused' or 'reference'")
    if impl == "reference" or (impl == "auto" and hidden.dtype == torch.float16):
        if vocab_shard is not None:
            raise ValueError("the reference (used for fp16) needs the whole vocabulary: with a vocabulary-sharded "
                             "head score the vocab-parallel logits instead (training.losses.causal_lm_loss with "
                             "its tp_group)")
        total, z_part = linear_cross_entropy_reference(hidden, weight, bias, labels, weights, z_loss, return_z=True)
        return (total, z_part.detach()) if return_z else total
    chunk = chunk_rows or default_chunk_rows(weight.shape[0])
    block = block_rows or default_block_rows(weight.shape[0], hidden.element_size())
    total, z_part = _LinearCrossEntropy.apply(hidden, weight, bias, labels, weights, chunk, block, vocab_shard,
                                              float(z_loss))
    return (total, z_part) if return_z else total
