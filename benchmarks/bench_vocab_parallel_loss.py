#!/usr/bin/env python
"""Tensor-parallel LM head + loss: the fused kernel on each rank's vocabulary slice (kernels/linear_cross_entropy
with a VocabShard) vs the unfused path Megatron-LM and our trainer's fallback run (column-parallel head logits ->
vocab-parallel cross-entropy -> masked mean, training/losses.causal_lm_loss). TP = 2 on 2 gloo processes, one thread
each. Forward + backward time of both ranks (barrier, run, barrier; the slower rank counts), interleaved A B A B,
median of the runs; and the peak memory each adds on top of its inputs (growth of rank 0's peak RSS, VmHWM reset
first, over one forward + backward in fresh processes). The hidden gradient's all-reduce (the TP region entry) is
the same for both and left out.

    python benchmarks/bench_vocab_parallel_loss.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_code.testing import peak_rss_growth, run_distributed  # noqa: E402

TP = 2
SHAPES = [  # (tokens, hidden, vocab, dtype): issue 2's benchmark head, and phi-1's vocabulary at hidden 1024
    (2048, 256, 8192, "bfloat16"),
    (2048, 256, 8192, "float32"),
    (2048, 1024, 51200, "bfloat16"),
]


def _setup(rank, n, hid, v, dtype_name):
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    group = dist.new_group(list(range(TP)))
    dtype = getattr(torch, dtype_name)
    g = torch.Generator().manual_seed(0)
    per = v // TP
    h = torch.randn(n, hid, generator=g).to(dtype)
    w = (torch.randn(v, hid, generator=g) * 0.02).to(dtype)[rank * per:(rank + 1) * per].clone()
    b = torch.zeros(per, dtype=dtype)
    labels = torch.randint(0, v, (n,), generator=g)
    return group, (h, w, b, labels, torch.ones(n)), rank * per


def _variants(group, start):
    from megatron_code.kernels.linear_cross_entropy import linear_cross_entropy
    from megatron_code.parallel.layers import vocab_shard
    from megatron_code.training.losses import causal_lm_loss
    import torch.nn.functional as F

    def unfused(h, w, b, labels, mask):
        logits = F.linear(h, w, b)  # (N, V/tp) in the compute dtype
        return causal_lm_loss(logits[None], labels[None], mask[None], group)

    def fused(h, w, b, labels, mask):
        return linear_cross_entropy(h, w, b, labels, mask / mask.sum(), vocab_shard=vocab_shard(group, start))

    return {"unfused": unfused, "fused": fused}


def _time(rank, world, shape, repeats):
    import time
    import torch
    import torch.distributed as dist
    group, inputs, start = _setup(rank, *shape)
    fns = _variants(group, start)
    losses = {}

    def one(name):
        leaves = [t.clone().requires_grad_() for t in inputs[:3]]
        dist.barrier(group)
        t0 = time.perf_counter()
        loss = fns[name](leaves[0], leaves[1], leaves[2], *inputs[3:])
        loss.backward()
        dist.barrier(group)
        losses[name] = float(loss.detach().float())
        return time.perf_counter() - t0

    one("unfused"), one("fused")  # warm up
    times = {"unfused": [], "fused": []}
    for _ in range(repeats):
        for name in times:
            times[name].append(one(name))
    assert abs(losses["fused"] - losses["unfused"]) <= 1e-4 * abs(losses["unfused"]), losses
    return times, torch.get_num_threads()


def _peak(rank, world, shape, variant):
    import torch.distributed as dist
    group, inputs, start = _setup(rank, *shape)
    fn = _variants(group, start)[variant]
    leaves = [t.clone().requires_grad_() for t in inputs[:3]]
    dist.barrier(group)
    with peak_rss_growth() as grown:  # only this forward + backward counts
        fn(leaves[0], leaves[1], leaves[2], *inputs[3:]).backward()
    return grown.mib


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    print(f"TP {TP} on gloo, 1 thread per rank, load average {os.getloadavg()[0]:.1f}")
    for shape in SHAPES:
        n, hid, v, dtype = shape
        times, _ = run_distributed(_time, TP, shape, args.repeats, timeout=1800)[0]
        med = {k: statistics.median(x) for k, x in times.items()}
        mem = {k: run_distributed(_peak, TP, shape, k, timeout=600)[0] for k in ("unfused", "fused")}
        print(f"N={n} H={hid} V={v} (V/tp={v // TP}) {dtype}: unfused {med['unfused'] * 1e3:.1f} ms, fused "
              f"{med['fused'] * 1e3:.1f} ms -> {med['unfused'] / med['fused']:.2f}x; peak memory unfused "
              f"{mem['unfused']:.0f} MiB, fused {mem['fused']:.0f} MiB ({mem['unfused'] / mem['fused']:.1f}x less)"
              f"  (runs ms: unfused {', '.join(f'{x * 1e3:.0f}' for x in times['unfused'])}; "
              f"fused {', '.join(f'{x * 1e3:.0f}' for x in times['fused'])})")


if __name__ == "__main__":
    main()
