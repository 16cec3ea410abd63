"""Adafactor on DeepSpeed's flat fp32 partitions (ZeRO-1/2, BF16_Optimizer): at DP2 each rank steps its half of
a flat buffer holding pieces of many tensors, some split between the ranks, and the result equals the per-tensor
Adafactor (tests/unit/test_adafactor.py checks that one against a plain float reference) stepping whole tensors:
1. the optimizer alone on a hand-made flat layout (alignment padding between tensors, two groups, update clipping
   active, weight decay lr^2, beta1 0.9), 3 steps; also a tensor-parallel layout (each rank a shard of every
   tensor, sums all-reduced over TP);
2. through DeepSpeed, two steps on different data per rank: --zero-stage 1 (DeepSpeedZeroOptimizer, fp32) and
   --zero-stage 2 equal the per-tensor optimizer on the whole batch bitwise; --bf16 --zero-stage 1
   (BF16_Optimizer, the wrapper of PaLM 540B's bf16 ZeRO-1 layout) keeps fp32 masters bitwise equal to those of
   --bf16 --zero-stage 0, where DeepSpeed hands Adafactor one master per parameter.
One launch of two gloo processes for all of it."""

import numpy as np
import pytest
import torch

from megatron_code.testing import run_distributed
from megatron_code.training.optimizer import Adafactor

pytestmark = pytest.mark.distributed

SHAPES = [(5, 3), (7,), (4, 4), (3,), (6, 2)]  # 15 + 7 + 16 + 3 + 12 elements
GROUPS = [([0, 1, 2], 0.1), ([3, 4], 0.0)]  # (tensor indices, weight decay)
PAD = 1  # alignment padding after each tensor but the last of a group (ZeRO's parameter alignment)
KW = dict(lr=1e-2, beta1=0.9, clip_threshold=0.5, weight_decay_lr_power=2.0)


def tensors_and_grads(steps=3):
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(s, generator=g) for s in SHAPES]
    grads = [[torch.randn(s, generator=g) * (1 + 10 * (i == 2 and k == 1)) for i, s in enumerate(SHAPES)]
             for k in range(steps)]
    return x, grads


def reference(steps=3):
    x, grads = tensors_and_grads(steps)
    params = [torch.nn.Parameter(t.clone()) for t in x]
    opt = Adafactor([{"params": [params[i] for i in idx], "weight_decay": wd} for idx, wd in GROUPS], **KW)
    for k in range(steps):
        for p, gr in zip(params, grads[k]):
            p.grad = gr.clone()
        opt.step()
    return [p.detach().numpy() for p in params]


def _flat(ts, idx):
    """The group's tensors back to back with PAD zeros between them, padded to an even length (2 ranks)."""
    parts = []
    for j, i in enumerate(idx):
        parts.append(ts[i].reshape(-1))
        if j < len(idx) - 1:
            parts.append(torch.zeros(PAD))
    flat = torch.cat(parts)
    return torch.cat([flat, torch.zeros(flat.numel() % 2)])


def _layouts(partitions, rank, size, dp_group):
    out = []
    for (idx, _), part in zip(GROUPS, partitions):
        start, end = rank * size[idx[0]], (rank + 1) * size[idx[0]]
        slices, off = [], 0
        for j, i in enumerate(idx):
            n = int(np.prod(SHAPES[i]))
            if max(off, start) < min(off + n, end):
                slices.append((j, max(off, start) - start, min(off + n, end) - start))
            off += n + PAD
        out.append({"partition": part, "dp_group": dp_group, "params": [torch.empty(SHAPES[i]) for i in idx],
                    "numel": [int(np.prod(SHAPES[i])) for i in idx], "slices": slices})
    return out


def flat_dp(rank, world, steps=3):
    """Each rank steps its half of each group's flat buffer; returns the halves."""
    import torch.distributed as dist

    x, grads = tensors_and_grads(steps)
    flats = [_flat(x, idx) for idx, _ in GROUPS]
    size = {idx[0]: f.numel() // world for (idx, _), f in zip(GROUPS, flats)}
    parts = [torch.nn.Parameter(f[rank * size[idx[0]]:(rank + 1) * size[idx[0]]].clone())
             for (idx, _), f in zip(GROUPS, flats)]
    opt = Adafactor([{"params": [p], "weight_decay": wd} for p, (_, wd) in zip(parts, GROUPS)], **KW)
    opt.use_flat_partitions(_layouts(parts, rank, size, dist.group.WORLD))
    for k in range(steps):
        for p, (idx, _) in zip(parts, GROUPS):
            p.grad = _flat(grads[k], idx)[rank * size[idx[0]]:(rank + 1) * size[idx[0]]].clone()
        opt.step()
    return [p.detach().numpy() for p in parts]


def flat_tp(rank, world, steps=3):
    """Tensor parallelism: each rank holds the rank-th half of every tensor (dim 0, flattened), its own flat
    partition of them (DP = 1), and the sums of squares are all-reduced over TP."""
    import torch.distributed as dist

    x, grads = tensors_and_grads(steps)
    shard = lambda t: t.reshape(-1).chunk(world)[rank].clone()  # noqa: E731
    own = [dist.new_group([r]) for r in range(world)][rank]
    sizes = [[shard(x[i]).numel() for i in idx] for idx, _ in GROUPS]
    parts = [torch.nn.Parameter(torch.cat([shard(x[i]) for i in idx])) for idx, _ in GROUPS]
    opt = Adafactor([{"params": [p], "weight_decay": wd} for p, (_, wd) in zip(parts, GROUPS)], tp_group=dist.group.WORLD,
                    **KW)
    layouts = []
    for p, (idx, _), n in zip(parts, GROUPS, sizes):
        marked = []
        for _ in idx:
            t = torch.empty(1)
            t.tensor_model_parallel = True
            marked.append(t)
        offs = np.cumsum([0] + n[:-1])
        layouts.append({"partition": p, "dp_group": own, "params": marked, "numel": n,
                        "slices": [(j, int(o), int(o + m)) for j, (o, m) in enumerate(zip(offs, n))]})
    opt.use_flat_partitions(layouts)
    for k in range(steps):
        for p, (idx, _) in zip(parts, GROUPS):
            p.grad = torch.cat([shard(grads[k][i]) for i in idx])
        opt.step()
    return [p.detach().numpy() for p in parts]


def through_deepspeed(rank, world):
    """Two steps through DeepSpeed at DP2 for each layout; returns the fp32 master weights per layout (DeepSpeed's
    public safe_get_full_fp32_param: the whole tensor, gathered from the partitions)."""
    from deepspeed.utils import safe_get_full_fp32_param

    from megatron_code.config.cli import parse_args
    from megatron_code.parallel.deepspeed_compat import flat_partition_layouts, zero0_masters
    from megatron_code.parallel.engine import deepspeed_config, init_distributed, initialize_engine
    from megatron_code.training.optimizer import build_optimizer

    init_distributed("gloo")
    out = {}
    for name, extra in LAYOUTS.items():
        job = parse_args(ARGS + ["--micro-batch-size", "2", "--global-batch-size", "4"] + extra).job
        job.resolve_batch(world)
        model = make_model()
        optimizer = build_optimizer(model, job.optim)
        engine = initialize_engine(model, optimizer, deepspeed_config(job, 1))
        layouts = flat_partition_layouts(engine.optimizer)
        assert (layouts is None) == (name == "bf16-zero0"), name
        # initialize_engine handed the layout to Adafactor (what the trainer relies on)
        assert (optimizer.flat_layouts is None) == (layouts is None), name
        x = batch()[rank * 2:(rank + 1) * 2]
        for _ in range(2):
            inp = x.to(torch.bfloat16) if "--bf16" in extra else x
            engine.backward(engine(inp).float().pow(2).mean())
            engine.step()
        if layouts is None:
            masters = {id(lp): view for lp, _, view in zero0_masters(engine.optimizer)}
            assert len(masters) == 6
            weights = [masters[id(p)] for p in engine.module.parameters()]
        else:
            weights = [safe_get_full_fp32_param(p) for p in engine.module.parameters()]
        out[name] = ([w.detach().float().numpy() for w in weights],
                     [[i for i, _, _ in lay["slices"]] for lay in layouts or []])
    return out


ARGS = ["--optimizer", "adafactor", "--lr", "1e-2", "--optim.adafactor_clip_threshold", "0.5", "--clip-grad", "0"]
LAYOUTS = {"zero1": ["--zero-stage", "1"], "zero2": ["--zero-stage", "2"],
           "bf16-zero0": ["--zero-stage", "0", "--bf16"],  # per-tensor fp32 masters: the reference of the next
           "bf16-zero1": ["--zero-stage", "1", "--bf16"]}


def make_model():
    torch.manual_seed(0)  # odd sizes: tensors straddle the two ranks' partitions
    return torch.nn.Sequential(torch.nn.Linear(7, 9), torch.nn.Tanh(), torch.nn.Linear(9, 5), torch.nn.Tanh(),
                               torch.nn.Linear(5, 1))


def batch():
    return torch.randn(4, 7, generator=torch.Generator().manual_seed(1))


def deepspeed_reference():
    """The per-tensor optimizer on the whole batch (the mean over both ranks' halves = DP's averaged gradient)."""
    from megatron_code.config.cli import parse_args
    from megatron_code.training.optimizer import build_optimizer

    job = parse_args(ARGS + ["--micro-batch-size", "4", "--global-batch-size", "4"]).job
    model = make_model()
    opt = build_optimizer(model, job.optim)
    for _ in range(2):
        opt.zero_grad()
        model(batch()).pow(2).mean().backward()
        opt.step()
    return [p.detach().numpy() for p in model.parameters()]


def worker(rank, world):
    return {"dp": flat_dp(rank, world), "tp": flat_tp(rank, world), "ds": through_deepspeed(rank, world)}


def test_flat_partitions_step_like_whole_tensors():
    ranks = run_distributed(worker, 2, timeout=600)
    want = reference()
    # DP: the two halves of each group's flat buffer, joined, minus the padding, are the reference tensors
    for g, (idx, _) in enumerate(GROUPS):
        flat = np.concatenate([ranks[0]["dp"][g], ranks[1]["dp"][g]])
        off = 0
        for i in idx:
            n = int(np.prod(SHAPES[i]))
            np.testing.assert_allclose(flat[off:off + n], want[i].reshape(-1), rtol=1e-6, atol=1e-7)
            off += n + PAD
        assert not flat[off - PAD:].any() or off - PAD >= flat.size  # padding stays zero
    # TP: each rank's shards of the tensors are the reference's halves
    for g, (idx, _) in enumerate(GROUPS):
        got = [np.split(ranks[r]["tp"][g], np.cumsum([np.array_split(want[i].reshape(-1), 2)[r].size
                                                       for i in idx])[:-1]) for r in range(2)]
        for j, i in enumerate(idx):
            np.testing.assert_allclose(np.concatenate([got[0][j], got[1][j]]), want[i].reshape(-1), rtol=1e-6,
                                       atol=1e-7)
    # DeepSpeed: ZeRO-1/2 (fp32) step exactly like the per-tensor optimizer on the whole batch; BF16_Optimizer's
    # masters exactly like the per-tensor optimizer on the masters DeepSpeed keeps at bf16 ZeRO-0 (same bf16
    # forward and gradients; tests/unit/test_adafactor.py checks that path against the optimizer without DeepSpeed)
    ref = deepspeed_reference()
    for name in LAYOUTS:
        if name != "bf16-zero0":
            split = [set(a) & set(b) for a, b in zip(ranks[0]["ds"][name][1], ranks[1]["ds"][name][1])]
            assert any(split), f"{name}: no tensor is split between the ranks' partitions"
        want = ranks[0]["ds"]["bf16-zero0"][0] if name == "bf16-zero1" else ref
        for r in range(2):
            for got, w in zip(ranks[r]["ds"][name][0], want):
                if name != "bf16-zero0":
                    np.testing.assert_array_equal(got, w, err_msg=f"{name} rank {r}")
