"""PaLM's z-loss (1e-4 log^2 Z per scored token) on every loss path: the fused head + loss kernel (whole and
vocabulary-sharded), the unfused causal loss (whole and vocab-parallel): values equal a direct reference, gradients
pass gradcheck, and the paths agree with each other; TP2 equals TP1."""

import pytest
import torch

from megatron_code.kernels.linear_cross_entropy import linear_cross_entropy, linear_cross_entropy_reference
from megatron_code.testing import run_distributed
from megatron_code.training.losses import causal_lm_loss, vocab_logsumexp, z_loss_term

N, H, V = 13, 6, 20
Z = 0.05  # large enough that the z part shows in every gradient


def data(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g, dtype=dtype)
    weight = torch.randn(V, H, generator=g, dtype=dtype) * 0.7
    bias = torch.randn(V, generator=g, dtype=dtype) * 0.3
    labels = torch.randint(0, V, (N,), generator=g)
    weights = torch.rand(N, generator=g, dtype=dtype)
    weights[::3] = 0.0
    return hidden, weight, bias, labels, weights / weights.sum()


def direct(hidden, weight, bias, labels, weights, z):
    """Straight from the definition: sum_i w_i (CE_i + z lse_i^2)."""
    logits = hidden @ weight.T + bias
    lse = torch.logsumexp(logits, dim=-1)
    return (weights * (lse - logits.gather(1, labels[:, None]).squeeze(1) + z * lse ** 2)).sum()


@pytest.mark.parametrize("chunk, block", [(4, None), (1000, 5), (3, 2)])
def test_fused_kernel_value_gradients_and_z_part(chunk, block):
    hidden, weight, bias, labels, weights = data()
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    total, z_part = linear_cross_entropy(*leaves, labels, weights, chunk_rows=chunk, block_rows=block, z_loss=Z,
                                         return_z=True)
    ref_leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    ref = direct(*ref_leaves, labels, weights, Z)
    assert total.item() == pytest.approx(ref.item(), rel=1e-12)
    lse = torch.logsumexp(hidden @ weight.T + bias, dim=-1)
    assert z_part.item() == pytest.approx((Z * weights * lse ** 2).sum().item(), rel=1e-12) and not z_part.requires_grad
    (total * 0.7).backward()
    (ref * 0.7).backward()
    for a, b in zip(leaves, ref_leaves):
        assert torch.allclose(a.grad, b.grad, rtol=1e-10, atol=1e-13)


def test_fused_kernel_gradcheck_with_z_loss():
    hidden, weight, bias, labels, weights = data()
    args = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    assert torch.autograd.gradcheck(
        lambda h, w, b: linear_cross_entropy(h, w, b, labels, weights, chunk_rows=4, z_loss=Z), args)


def test_reference_impl_and_zero_coefficient():
    hidden, weight, bias, labels, weights = data()
    ref = linear_cross_entropy_reference(hidden, weight, bias, labels, weights, Z)
    assert ref.item() == pytest.approx(direct(hidden, weight, bias, labels, weights, Z).item(), rel=1e-12)
    assert torch.equal(linear_cross_entropy(hidden, weight, bias, labels, weights, z_loss=0.0),
                       linear_cross_entropy(hidden, weight, bias, labels, weights))


def test_unfused_path_equals_the_fused_kernel():
    hidden, weight, bias, labels, weights = data()
    mask = (weights > 0).double()
    w_mean = mask / mask.sum()
    fused = linear_cross_entropy(hidden, weight, bias, labels, w_mean, z_loss=Z)
    logits = (hidden @ weight.T + bias)[None].requires_grad_()  # (1, N, V)
    unfused = causal_lm_loss(logits, labels[None], mask[None]) + z_loss_term(logits, mask[None], Z)
    assert unfused.item() == pytest.approx(fused.item(), rel=1e-12)
    assert torch.autograd.gradcheck(lambda x: z_loss_term(x, mask[None], Z), (logits,))
    assert torch.allclose(vocab_logsumexp(logits), torch.logsumexp(logits, -1))


def _tp2(rank, world):
    import torch.distributed as dist

    from megatron_code.parallel.layers import vocab_shard

    group = dist.new_group([0, 1])
    hidden, weight, bias, labels, weights = data()
    mask = (weights > 0).double()
    per = V // world
    lo, hi = rank * per, (rank + 1) * per
    # the fused kernel on this rank's vocabulary slice
    leaves = [hidden.clone().requires_grad_(), weight[lo:hi].clone().requires_grad_(), bias[lo:hi].clone()]
    total, z_part = linear_cross_entropy(*leaves, labels, mask / mask.sum(), chunk_rows=4, z_loss=Z,
                                         vocab_shard=vocab_shard(group, lo), return_z=True)
    total.backward()
    d_hidden = leaves[0].grad.clone()
    dist.all_reduce(d_hidden, group=group)
    # the unfused vocab-parallel path on this rank's logits
    logits = (hidden @ weight[lo:hi].T + bias[lo:hi])[None].requires_grad_()
    unfused = causal_lm_loss(logits, labels[None], mask[None], group) + z_loss_term(logits, mask[None], Z, group)
    unfused.backward()
    return (total.item(), z_part.item(), d_hidden, leaves[1].grad, unfused.item(), logits.grad)


@pytest.mark.distributed
def test_tp2_equals_tp1():
    hidden, weight, bias, labels, weights = data()
    mask = (weights > 0).double()
    leaves = [hidden.clone().requires_grad_(), weight.clone().requires_grad_()]
    tp1, z1 = linear_cross_entropy(*leaves, bias, labels, mask / mask.sum(), z_loss=Z, return_z=True)
    tp1.backward()
    logits = (hidden @ weight.T + bias)[None].requires_grad_()
    (causal_lm_loss(logits, labels[None], mask[None]) + z_loss_term(logits, mask[None], Z)).backward()
    for rank, (total, z_part, d_hidden, d_weight, unfused, d_logits) in enumerate(run_distributed(_tp2, 2,
                                                                                                   timeout=300)):
        lo, hi = rank * (V // 2), (rank + 1) * (V // 2)
        assert total == pytest.approx(tp1.item(), rel=1e-12) and z_part == pytest.approx(z1.item(), rel=1e-12)
        assert unfused == pytest.approx(tp1.item(), rel=1e-12)
        assert torch.allclose(d_hidden, leaves[0].grad, rtol=1e-10, atol=1e-13)
        assert torch.allclose(d_weight, leaves[1].grad[lo:hi], rtol=1e-10, atol=1e-13)
        assert torch.allclose(d_logits, logits.grad[..., lo:hi], rtol=1e-10, atol=1e-13)


def test_mim_objective_adds_the_z_loss_of_each_direction():
    """MIM: z-loss on the forward and the backward rows, each averaged over its own scored tokens (as fwd_ce and
    bwd_ce are), logged as z_loss; the other terms unchanged."""
    from types import SimpleNamespace

    from megatron_code.config.cli import parse_args
    from megatron_code.data.objectives import mim_batch
    from megatron_code.training.objective import MIMObjective

    V, L2R, R2L, PAD, EOD = 40, 6, 7, 1, 0
    tok = SimpleNamespace(special_tokens={"<l2r>": L2R, "<r2l>": R2L}, pad=PAD, eod=EOD)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(8, V, (2, 9), generator=g)
    tokens[1, -2:] = PAD
    batch = mim_batch(tokens, None, L2R, R2L, PAD, EOD)
    logits = torch.randn(4, 8, V, generator=g, dtype=torch.float64) * 3
    out = {}
    for z in (0.0, 1e-2):
        job = parse_args(["--mim", "--z-loss", str(z), "--mock-data", "--model.vocab_size", str(V)]).job
        obj = MIMObjective(job, tok)
        assert ("z_loss" in obj.part_names) == bool(z)
        out[z] = obj.loss(logits, batch, None, train=True)
    lse2 = vocab_logsumexp(logits) ** 2
    mask = batch["loss_mask"]
    want = 1e-2 * sum((lse2[rows] * mask[rows]).sum() / mask[rows].sum() for rows in (slice(0, 2), slice(2, 4)))
    assert torch.allclose(out[1e-2][0] - out[0.0][0], want)
    assert out[1e-2][1]["z_loss"] == pytest.approx(float(want))
    assert {k: v for k, v in out[1e-2][1].items() if k != "z_loss"} == out[0.0][1]
