"""The fused head + loss kernel on a vocabulary-sharded head (kernels/linear_cross_entropy VocabShard, the TP head's
`vocab_shard()`): on 2 and 3 gloo ranks, each holding a slice of the vocabulary, the loss equals the single-process
reference on the whole vocabulary on every rank, the hidden gradients summed over the ranks equal the reference's,
and each rank's weight and bias gradients equal the reference's rows of its slice. fp64/fp32/bf16, with and without
bias, blocks and chunks that do and do not divide N, labels on every rank. The trainer-level parity (TP2, TP4, SP
training equal to the single process) is in test_training_parity.py."""

import pytest

from megatron_code.testing import run_distributed

pytestmark = pytest.mark.distributed

CASES = [  # (dtype name, tolerance on gradients relative to their max, bias, chunk_rows, block_rows)
    ("float64", 1e-12, True, 7, None), ("float64", 1e-12, False, 1000, 10), ("float32", 2e-6, True, 16, 37),
    ("float32", 2e-6, False, 5, 1), ("bfloat16", 2e-2, True, 7, 10), ("bfloat16", 2e-2, False, 1000, None),
]
N, H, V = 37, 16, 48


def _compare(rank, world):
    import torch
    import torch.distributed as dist

    from megatron_code.kernels.linear_cross_entropy import linear_cross_entropy, linear_cross_entropy_reference
    from megatron_code.parallel.layers import vocab_shard

    group = dist.new_group(list(range(world)))
    per = V // world
    lo, hi = rank * per, (rank + 1) * per
    failures = []
    for dtype_name, tol, with_bias, chunk, block in CASES:
        dtype = getattr(torch, dtype_name)
        g = torch.Generator().manual_seed(3)
        hidden = torch.randn(N, H, generator=g).to(dtype)
        weight = (torch.randn(V, H, generator=g) * 0.3).to(dtype)
        bias = (torch.randn(V, generator=g) * 0.1).to(dtype) if with_bias else None
        labels = torch.randint(0, V, (N,), generator=g)
        weights = torch.rand(N, generator=g)
        weights[::4] = 0.0
        weights /= weights.sum()
        leaves = [hidden.clone().requires_grad_(), weight.clone().requires_grad_(),
                  bias.clone().requires_grad_() if with_bias else None]
        ref = linear_cross_entropy_reference(*leaves, labels, weights)
        (ref * 0.37).backward()
        mine = [hidden.clone().requires_grad_(), weight[lo:hi].clone().requires_grad_(),
                bias[lo:hi].clone().requires_grad_() if with_bias else None]
        loss = linear_cross_entropy(*mine, labels, weights, chunk_rows=chunk, block_rows=block,
                                    vocab_shard=vocab_shard(group, lo))
        (loss * 0.37).backward()
        d_hidden = mine[0].grad.clone()
        dist.all_reduce(d_hidden, group=group)  # each rank holds its slice's part of the hidden gradient
        case = f"{dtype_name} bias={with_bias} chunk={chunk} block={block}"
        rtol = 1e-6 if dtype != torch.bfloat16 else 1e-5
        if not torch.allclose(loss.detach(), ref.detach(), rtol=rtol, atol=0):
            failures.append(f"{case}: loss {loss.item()} vs {ref.item()}")
        pairs = [("hidden", d_hidden, leaves[0].grad), ("weight", mine[1].grad, leaves[1].grad[lo:hi])]
        if with_bias:
            pairs.append(("bias", mine[2].grad, leaves[2].grad[lo:hi]))
        for name, a, b in pairs:
            if a.dtype != b.dtype or (a.float() - b.float()).abs().max() > tol * b.float().abs().max():
                failures.append(f"{case}: {name} gradient differs")
    return failures, float(loss.detach().float())


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_fused_loss_equals_whole_vocabulary_reference(world):
    results = run_distributed(_compare, world, timeout=300)
    for failures, _ in results:
        assert failures == []
    assert len({last for _, last in results}) == 1  # every rank has the same loss


def _fp16_refused(rank, world):
    import torch
    import torch.distributed as dist

    from megatron_code.kernels.linear_cross_entropy import linear_cross_entropy
    from megatron_code.parallel.layers import vocab_shard

    shard = vocab_shard(dist.new_group([0, 1]), rank * 4)
    try:
        linear_cross_entropy(torch.randn(3, 2).half(), torch.randn(4, 2).half(), None, torch.tensor([0, 5, 7]),
                             torch.ones(3) / 3, vocab_shard=shard)
    except ValueError as exc:
        return str(exc)
    return None


def test_fp16_with_a_vocabulary_shard_is_refused():
    for message in run_distributed(_fp16_refused, 2, timeout=120):
        assert message is not None and "whole vocabulary" in message
