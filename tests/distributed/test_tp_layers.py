"""Layer parity: each tensor-parallel layer's output and input/weight gradients equal the unsharded layer
(TP 2 and 4, gloo, CPU, fp32). One spawn per TP size runs every check (spawning costs seconds)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from megatron_code.parallel import mappings as M
from megatron_code.parallel.groups import ParallelGroups
from megatron_code.parallel.layers import (ColumnParallelLinear, ReplicatedKVLinear, RowParallelLinear, ShardingError,
                                           TPReduce, VocabParallelEmbedding)
from megatron_code.parallel.random import get_rng_state, seed_parallel_rng, set_rng_state
from megatron_code.testing import run_distributed

pytestmark = pytest.mark.distributed

B, T, H = 2, 8, 16


def close(a, b, what):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"{what}: {m}")


def chunk(x, dim, tp, r):
    return x.chunk(tp, dim=dim)[r]


def _linear(i, o, bias=True):
    lin = nn.Linear(i, o, bias=bias)
    with torch.no_grad():
        lin.bias.normal_() if bias else None
    return lin


def check_column(g, tp, r):
    for gather in (False, True):
        dense = _linear(H, 4 * tp)
        x = torch.randn(B, T, H, requires_grad=True)
        xd = x.detach().clone().requires_grad_(True)
        par = ColumnParallelLinear.from_dense(dense, g, gather_output=gather)
        assert par.weight.tensor_model_parallel and par.weight.partition_dim == 0
        y, yd = par(x), dense(xd)
        close(y, yd if gather else chunk(yd, -1, tp, r), f"column out gather={gather}")
        w = torch.randn_like(yd)
        (y * (w if gather else chunk(w, -1, tp, r))).sum().backward()
        (yd * w).sum().backward()
        close(x.grad, xd.grad, "column input grad")
        close(par.weight.grad, chunk(dense.weight.grad, 0, tp, r), "column weight grad")
        close(par.bias.grad, chunk(dense.bias.grad, 0, tp, r), "column bias grad")


def check_row(g, tp, r):
    for parallel_in in (True, False):
        dense = _linear(4 * tp, H)
        x = torch.randn(B, T, 4 * tp)
        xd = x.clone().requires_grad_(True)
        xin = (chunk(x, -1, tp, r) if parallel_in else x).clone().requires_grad_(True)
        par = RowParallelLinear.from_dense(dense, g, input_is_parallel=parallel_in)
        y, yd = par(xin), dense(xd)
        close(y, yd, f"row out parallel_in={parallel_in}")
        w = torch.randn_like(yd)
        (y * w).sum().backward()
        (yd * w).sum().backward()
        close(xin.grad, chunk(xd.grad, -1, tp, r) if parallel_in else xd.grad, "row input grad")
        close(par.weight.grad, chunk(dense.weight.grad, 1, tp, r), "row weight grad")
        close(par.bias.grad, dense.bias.grad, "row bias grad (replicated, full on every rank)")


def check_parallel_block_single_reduce(g, tp, r):
    """Two row-parallel layers without reduction, summed, then one TPReduce == dense a(x1) + b(x2)."""
    da, db = _linear(4 * tp, H), _linear(4 * tp, H)
    x1, x2 = torch.randn(B, T, 4 * tp), torch.randn(B, T, 4 * tp)
    pa = RowParallelLinear.from_dense(da, g, reduce="none")
    pb = RowParallelLinear.from_dense(db, g, reduce="none")
    red = TPReduce(g)
    y = red(pa(chunk(x1, -1, tp, r)) + pb(chunk(x2, -1, tp, r)))
    yd = da(x1) + db(x2)
    close(y, yd, "single reduction out")
    w = torch.randn_like(yd)
    (y * w).sum().backward()
    (yd * w).sum().backward()
    for p, d in ((pa, da), (pb, db)):
        close(p.weight.grad, chunk(d.weight.grad, 1, tp, r), "row_partial weight grad")
        close(p.bias.grad, d.bias.grad, "row_partial bias grad")


def check_sequence_parallel_mlp(g, tp, r):
    """SP: T-sharded input -> column (all-gather T) -> gelu -> row (reduce-scatter T) == dense, sharded on T."""
    d1, d2 = _linear(H, 4 * tp), _linear(4 * tp, H)
    x = torch.randn(B, T, H)
    xd = x.clone().requires_grad_(True)
    xs = chunk(x, 1, tp, r).clone().requires_grad_(True)
    c = ColumnParallelLinear.from_dense(d1, g, sequence_parallel=True)
    rw = RowParallelLinear.from_dense(d2, g, reduce="reduce_scatter")
    y, yd = rw(F.gelu(c(xs))), d2(F.gelu(d1(xd)))
    close(y, chunk(yd, 1, tp, r), "SP mlp out")
    w = torch.randn_like(yd)
    (y * chunk(w, 1, tp, r)).sum().backward()
    (yd * w).sum().backward()
    close(xs.grad, chunk(xd.grad, 1, tp, r), "SP input grad")
    close(c.weight.grad, chunk(d1.weight.grad, 0, tp, r), "SP column weight grad")
    close(rw.weight.grad, chunk(d2.weight.grad, 1, tp, r), "SP row weight grad")
    close(rw.bias.grad, d2.bias.grad, "SP row bias grad")


def check_embedding_and_kv(g, tp, r):
    dense = nn.Embedding(8 * tp, H)
    ids = torch.randint(0, 8 * tp, (B, T))
    par = VocabParallelEmbedding.from_dense(dense, g)
    y, yd = par(ids), dense(ids)
    close(y, yd, "vocab embedding out")
    w = torch.randn_like(yd)
    (y * w).sum().backward()
    (yd * w).sum().backward()
    close(par.weight.grad, chunk(dense.weight.grad, 0, tp, r), "vocab embedding grad")

    # Replicated KV (MQA and, at TP 4, GQA with 2 kv heads): this rank uses kv head r // (tp / kv).
    hd = 4
    for kv in sorted({1, tp // 2} - {0}):
        dense = _linear(H, kv * hd)
        x = torch.randn(B, T, H)
        xd = x.clone().requires_grad_(True)
        xr = x.clone().requires_grad_(True)
        par = ReplicatedKVLinear.from_dense(dense, g, kv_heads=kv, head_dim=hd)
        head = r // (tp // kv)
        y, yd = par(xr), dense(xd)
        close(y, yd[..., head * hd:(head + 1) * hd], f"replicated kv={kv} out")
        # Each rank's loss covers the query heads it owns: every kv head is used by tp/kv ranks, so weight the
        # dense loss by 1 per rank-use; the summed gradients must equal the dense gradient of sum_r loss_r.
        w = torch.randn(tp, B, T, hd)
        (y * w[r]).sum().backward()
        dense_loss = sum((yd[..., (q // (tp // kv)) * hd:(q // (tp // kv) + 1) * hd] * w[q]).sum() for q in range(tp))
        dense_loss.backward()
        close(par.weight.grad, dense.weight.grad, f"replicated kv={kv} weight grad (all-reduced)")
        close(par.bias.grad, dense.bias.grad, f"replicated kv={kv} bias grad")
        # The input grad is partial per rank (its own heads); the TP region entry all-reduces it.
        close(xr.grad, xd.grad, f"replicated kv={kv} input grad")


def check_cross_entropy(g, tp, r):
    V = 8 * tp
    logits = torch.randn(B, T, V)
    labels = torch.randint(0, V, (B, T))
    labels[0, :3] = -100
    mask = (labels != -100).float()
    ld = logits.clone().requires_grad_(True)
    ll = chunk(logits, -1, tp, r).clone().requires_grad_(True)
    # the one unfused vocabulary-parallel cross-entropy (training/losses.py), on this rank's vocabulary slice
    from megatron_code.training.losses import causal_lm_loss
    ref = F.cross_entropy(ld.view(-1, V), labels.view(-1), ignore_index=-100, reduction="none").view(B, T)
    loss = causal_lm_loss(ll, labels.clamp(min=0), mask, g)
    ref_loss = (ref * mask).sum() / mask.sum()
    close(loss, ref_loss.detach(), "masked mean CE")
    loss.backward()
    ref_loss.backward()
    close(ll.grad, chunk(ld.grad, -1, tp, r), "CE logits grad")
    # Matches the single-device loss too.
    close(loss.detach(), causal_lm_loss(logits, labels.clamp(min=0), mask), "equals training.losses.causal_lm_loss")


def check_mappings_and_errors(g, tp, r):
    x = torch.arange(float(B * T * 4 * tp)).view(B, T, 4 * tp)
    close(M.gather_from_tp(M.scatter_to_tp(x, g), g), x, "scatter/gather round trip")
    close(M.gather_from_sequence(M.scatter_to_sequence(x, g), g), x, "sequence round trip")
    with pytest.raises(ShardingError, match="not divisible by the tensor parallel size"):
        ColumnParallelLinear(H, 4 * tp + 1, group=g)
    with pytest.raises(ValueError, match="sequence length divisible"):
        M.scatter_to_sequence(torch.zeros(1, tp + 1, 2), g)


def check_rng(groups, tp, r):
    tracker = seed_parallel_rng(1234, groups.tp_rank)
    outside = torch.rand(4)
    with tracker.fork():
        inside = torch.rand(4)
    after = torch.rand(4)
    state = get_rng_state(tracker)
    with tracker.fork():
        nxt = torch.rand(4)
    set_rng_state(state, tracker)
    with tracker.fork():
        close(torch.rand(4), nxt, "tracker state round trip")
    mine = torch.stack([outside, inside, after])
    allv = M.all_gather(mine.unsqueeze(0), 0, groups.tp_group)
    for q in range(tp):
        close(allv[q, 0], allv[0, 0], "default stream equal across TP")
        close(allv[q, 2], allv[0, 2], "default stream unaffected by fork")
        if q != r:
            assert not torch.equal(allv[q, 1], mine[1]), "TP stream must differ across TP ranks"


def _run_all(rank, world):
    groups = ParallelGroups.build(tp=world)
    g, tp, r = groups.tp_group, groups.tp_size, groups.tp_rank
    for check in (check_column, check_row, check_parallel_block_single_reduce, check_sequence_parallel_mlp,
                  check_embedding_and_kv, check_cross_entropy, check_mappings_and_errors):
        torch.manual_seed(100)  # identical full tensors on every rank
        check(g, tp, r)
    check_rng(groups, tp, r)
    return "ok"


@pytest.mark.parametrize("tp", [2, 4])
def test_tp_layers_match_dense(tp):
    assert run_distributed(_run_all, tp, timeout=120) == ["ok"] * tp


def test_layers_world_size_one_without_process_group():
    """TP size 1 (group None): layers are plain dense layers, no torch.distributed needed."""
    torch.manual_seed(0)
    dense = _linear(H, 12)
    col = ColumnParallelLinear.from_dense(dense, None)
    x = torch.randn(B, T, H)
    close(col(x), dense(x), "tp1 column")
    row = RowParallelLinear.from_dense(dense, None)
    close(row(x), dense(x), "tp1 row")


def test_checkpoint_replays_tp_rng_stream():
    """Recomputation under activation checkpointing draws the same TP-stream dropout masks as the forward."""
    import torch.utils.checkpoint as tckpt

    from megatron_code.parallel.random import RNGTracker, checkpoint

    torch.manual_seed(0)
    lin = _linear(H, H)
    x = torch.randn(B, T, H)

    def grads(mode):
        tracker = RNGTracker()
        tracker.add("tensor_parallel", 5)
        torch.manual_seed(1)
        lin.zero_grad()

        def body(inp):
            with tracker.fork():
                return F.dropout(lin(inp), p=0.5, training=True)

        if mode == "plain":
            out = body(x)
        elif mode == "ours":
            out = checkpoint(body, x, tracker=tracker)
        else:
            out = tckpt.checkpoint(body, x, use_reentrant=False)
        with tracker.fork():
            torch.rand(3)  # the stream moves on before backward, as later layers would move it
        out.sum().backward()
        return lin.weight.grad.clone()

    ref = grads("plain")
    close(grads("ours"), ref, "checkpointed grads with TP-stream replay")
    assert not torch.allclose(grads("torch"), ref), "without replay the recompute should draw other masks"
