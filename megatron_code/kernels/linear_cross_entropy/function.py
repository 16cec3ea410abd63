"""Fused LM head + cross-entropy: the (N, V) logits never exist as a whole.

Why: for a causal-LM step the head's logits are the largest activation (2,048 tokens x 8,192 vocab is 16.7M
values; at PaLM's 256k vocabulary one 2,048-token sequence is 537M), and the unfused path writes them in the
compute dtype, again upcast to float32, again as log-softmax for backward, and reads each back. Profiled on issue
2's bf16 benchmark model on 2 CPU cores, the head + loss was ~25% of the step.

Here rows are processed in chunks of ``chunk_rows`` (chosen so one chunk's float32 logits stay ~8 MB, i.e. in a
core's cache on the machines we measured): per chunk, logits -> float32 -> logsumexp -> loss, and, because the
loss is a weighted *sum* (its gradient with respect to nll_i is ``weights_i`` times the scalar upstream
gradient), the gradient is formed in the same pass:

    d z_i   = weights_i * (softmax(z_i) - onehot(labels_i))   (float32, then the compute dtype for the matmuls)
    d hidden = d z @ weight          d weight += d z^T @ hidden          d bias += sum_i d z_i

and backward only scales the stored ``d hidden`` / ``d weight`` / ``d bias`` by the upstream scalar. So the head
matmul runs once forward and twice "backward" (inside forward), the same three matmuls as unfused, and no logits
are kept for backward. Gradients of weight and bias accumulate over chunks in float32.

Contract: identical value to `reference.linear_cross_entropy_reference` (same per-row arithmetic: logits in the
input dtype, scored in float32), gradients equal up to the order of float32 accumulation over chunks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .reference import linear_cross_entropy_reference

_CHUNK_BYTES = 8 << 20  # float32 logits per chunk


def default_chunk_rows(vocab: int) -> int:
    """Rows per chunk: ~8 MB of float32 logits, at least 16 and at most 4,096 rows."""
    return max(16, min(4096, _CHUNK_BYTES // (4 * max(1, vocab))))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, weights, chunk_rows):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        need_b = need_b and bias is not None
        score = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        n = hidden.shape[0]
        d_hidden = torch.empty_like(hidden) if need_h else None  # (N, H)
        d_weight = torch.zeros(weight.shape, dtype=score, device=weight.device) if need_w else None  # (V, H)
        d_bias = torch.zeros(weight.shape[0], dtype=score, device=weight.device) if need_b else None  # (V,)
        total = torch.zeros((), dtype=score, device=hidden.device)
        w = weights.to(score)
        half = hidden.dtype != score
        dw_chunk = torch.empty(weight.shape, dtype=hidden.dtype, device=weight.device) if need_w and half else None
        for s in range(0, n, chunk_rows):
            e = min(n, s + chunk_rows)
            h_c, y_c, w_c = hidden[s:e], labels[s:e, None], w[s:e]
            z_in = F.linear(h_c, weight, bias)  # (c, V) logits of this chunk in the compute dtype
            z = z_in.to(score)  # scored in float32 (a new buffer, overwritten in place below)
            target = z.gather(1, y_c).squeeze(1)  # (c,)
            z_max = z.amax(dim=-1, keepdim=True)  # (c, 1); logsumexp by hand: one exp pass, reused for softmax
            sum_exp = z.sub_(z_max).exp_().sum(dim=-1, keepdim=True)  # z now holds exp(z - max)
            lse = (z_max + sum_exp.log()).squeeze(1)
            total += ((lse - target) * w_c).sum()
            if not (need_h or need_w or need_b):
                continue
            g = z.mul_(w_c[:, None] / sum_exp)  # weights_i * softmax: d loss / d z for an upstream gradient of 1 ...
            g.scatter_add_(1, y_c, -w_c[:, None])  # ... minus weights_i at the target
            if need_b:
                d_bias += g.sum(0)
            g = z_in.copy_(g) if half else g  # back to the compute dtype for the matmuls
            if need_h:
                torch.mm(g, weight, out=d_hidden[s:e])
            if need_w and dw_chunk is None:  # float32/64 compute: accumulate in place
                d_weight.addmm_(g.t(), h_c)
            elif need_w:  # (V, H) rounded per chunk in the compute dtype, summed over chunks in float32
                torch.mm(g.t(), h_c, out=dw_chunk)
                d_weight += dw_chunk
        ctx.save_for_backward(d_hidden, d_weight, d_bias)
        ctx.param_dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad):
        d_hidden, d_weight, d_bias = ctx.saved_tensors
        w_dtype, b_dtype = ctx.param_dtypes
        return (None if d_hidden is None else d_hidden * grad.to(d_hidden.dtype),
                None if d_weight is None else (d_weight * grad).to(w_dtype),
                None if d_bias is None else (d_bias * grad).to(b_dtype),
                None, None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         labels: torch.Tensor, weights: torch.Tensor, *, chunk_rows: int | None = None,
                         impl: str = "auto") -> torch.Tensor:
    """``sum_i weights_i * CE(hidden_i @ weight.T + bias, labels_i)`` as a 0-dim float32 tensor (float64 for
    float64 inputs). hidden (N, H), weight (V, H), bias (V,) or None, labels (N,) long, weights (N,).

    For a mean over a loss mask pass ``weights = mask / mask.sum()``. impl: "auto"/"fused" (chunked, see the module
    docstring) or "reference" (materialised logits)."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"expected hidden (N, H) and weight (V, H), got {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}")
    if labels.shape != hidden.shape[:1] or weights.shape != hidden.shape[:1]:
        raise ValueError(f"labels and weights must be (N,) = ({hidden.shape[0]},), got {tuple(labels.shape)} and "
                         f"{tuple(weights.shape)}")
    if impl == "reference" or (impl == "auto" and hidden.dtype == torch.float16):
        # fp16: the fused path forms d z unscaled, where fp16 loss scaling cannot protect it from underflow.
        return linear_cross_entropy_reference(hidden, weight, bias, labels, weights)
    if impl not in ("auto", "fused"):
        raise ValueError(f"unknown impl {impl!r}: use 'auto', 'fused' or 'reference'")
    rows = chunk_rows or default_chunk_rows(weight.shape[0])
    return _LinearCrossEntropy.apply(hidden, weight, bias, labels, weights, rows)
