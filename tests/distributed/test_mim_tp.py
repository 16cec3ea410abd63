"""MIM and causal LM losses on vocab-parallel logits (TP=2, gloo) equal the single-process losses to 1e-5:
values of every term and divergence, and the gradients w.r.t. each rank's logits shard (with and without
stop-gradient). The vocabulary is never gathered: each rank only ever holds its (B, S, V/2) shard."""

import pytest
import torch

from megatron_code.data.objectives import mim_batch
from megatron_code.testing.spawn import run_distributed
from megatron_code.training.losses import DIVERGENCES, causal_lm_loss, mim_loss, split_directions

pytestmark = pytest.mark.distributed

L2R, R2L, PAD, EOD, V, B, S = 6, 7, 1, 0, 48, 2, 10
CASES = [(kind, None) for kind in DIVERGENCES] + [("tv", "fwd"), ("js", "bwd")]


def make_inputs():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(8, V, (B, S + 1), generator=g)
    tokens[0, 3] = EOD
    tokens[1, -2:] = PAD
    tokens[1, 2] = V - 1  # a target in the last shard
    tokens[0, 5] = 8  # and one in the first
    logits = torch.randn(2 * B, S, V, generator=g, dtype=torch.float64).float() * 4
    return mim_batch(tokens, None, L2R, R2L, PAD, EOD), logits


def losses_and_grads(logits, batch, group):
    """For every case: (total, fwd_ce, bwd_ce, agreement, d total / d logits) on the given (shard of) logits."""
    out = []
    for kind, stop in CASES:
        x = logits.clone().requires_grad_(True)
        lf, lb = split_directions(x, batch)
        total, parts = mim_loss(lf, lb, batch, beta=0.8, divergence=kind, stop_grad=stop, tp_group=group)
        total.backward()
        out.append(([total.item(), parts["fwd_ce"].item(), parts["bwd_ce"].item(), parts["agreement"].item()],
                    x.grad.clone()))
    x = logits.clone().requires_grad_(True)
    ce = causal_lm_loss(x, batch["labels"], batch["loss_mask"], tp_group=group)
    ce.backward()
    out.append(([ce.item()], x.grad.clone()))
    return out


def _tp_worker(rank, world_size):
    import torch.distributed as dist

    batch, logits = make_inputs()
    shard = V // world_size
    local = logits[..., rank * shard:(rank + 1) * shard].contiguous()  # (2B, S, V/tp): all this rank holds
    # numpy, not tensors: torch.multiprocessing would share tensor storage by file descriptor, and the child may
    # exit before the parent unpickles it (FileNotFoundError / ConnectionResetError in the parent).
    return [(vals, grad.numpy()) for vals, grad in losses_and_grads(local, batch, dist.group.WORLD)]


def test_tp2_equals_tp1():
    batch, logits = make_inputs()
    reference = losses_and_grads(logits, batch, None)
    ranks = run_distributed(_tp_worker, 2, timeout=120)
    shard = V // 2
    for rank, results in enumerate(ranks):
        for (ref_vals, ref_grad), (vals, grad) in zip(reference, results):
            assert torch.allclose(torch.tensor(vals), torch.tensor(ref_vals), atol=1e-5, rtol=0), (rank, vals)
            expected = ref_grad[..., rank * shard:(rank + 1) * shard]
            grad = torch.from_numpy(grad)
            assert torch.allclose(grad, expected, atol=1e-5, rtol=0), (rank, (grad - expected).abs().max())
    assert all(vals[3] > 0 for vals, _ in reference[:-1])  # the agreement term is really exercised
