#!/usr/bin/env python
"""Peak resident memory of building a TP x PP model on each rank: the trainer's sharded build (meta GPT, this rank's
shards materialised from per-module seeds) against the previous "full GPT on every rank, init, then shard" build
(reimplemented here as the peer: GPT(cfg) + init_weights + apply_tensor_parallel + build_pipeline).

    flock /tmp/megatron_bench.lock python benchmarks/bench_sharded_init.py [--preset democratize-300m] \
        [--tp 2 --pp 2] [--repeats 3] [--no-peer]

Method: spawned gloo processes (one per rank, CPU, fp32); each measures ru_maxrss (Linux: KiB) right before and
after the build (build_model, then build_pipeline with PP > 1), after importing everything the build imports, so
the difference is what building costs at its peak. Both builds run in separate spawns, interleaved A B A B;
reported: median over repeats of the largest per-rank growth, this rank's own parameter bytes, the full model's
bytes, and the build wall time (median). Use --no-peer when the full model does not fit in memory.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from megatron_code.testing import run_distributed  # noqa: E402


def _full_then_shard(job, groups):
    """The previous build: the whole GPT on this rank, initialized, then sharded by the TP plan."""
    from megatron_code.model import GPT
    from megatron_code.parallel.plans import plan_for
    from megatron_code.parallel.tensor_parallel import apply_tensor_parallel

    model = GPT(job.model)
    model.init_weights(torch.Generator().manual_seed(job.training.seed))
    if groups.tp_size > 1:
        apply_tensor_parallel(model, plan_for(job.model, groups.tp_size), groups)
    return model


def _rank(rank, world, argv, tp, pp, peer):
    import deepspeed.pipe  # noqa: F401  (build_pipeline imports it lazily: keep it out of the measurement)

    from megatron_code.config.cli import parse_args
    from megatron_code.model import count_parameters
    from megatron_code.parallel.groups import ParallelGroups
    from megatron_code.parallel.pipeline import build_pipeline
    from megatron_code.training.trainer import build_model

    job = parse_args(argv).job
    groups = ParallelGroups.build(tp, pp)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    model = (_full_then_shard if peer else build_model)(job, groups)
    if pp > 1:
        model = build_pipeline(model, groups, lambda logits, batch, train: (logits.sum(), {}),
                               seed=job.training.seed)
    seconds = time.perf_counter() - t0
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2 ** 20  # GiB
    own = sum(p.numel() * p.element_size() for p in model.parameters() if p.device.type != "meta") / 2 ** 30
    return grown, own, count_parameters(job.model) * 4 / 2 ** 30, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="democratize-300m")
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--pp", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-peer", action="store_true", help="skip the full-model build (when it cannot fit)")
    args = ap.parse_args()
    argv = ["--preset", args.preset, "--tensor-model-parallel-size", str(args.tp), "--pipeline-model-parallel-size",
            str(args.pp), "--mock-data", "--micro-batch-size", "1", "--global-batch-size", "1",
            "--parallel.pipeline_partition", "uniform", "--seed", "1"]
    kinds = ["sharded"] + ([] if args.no_peer else ["full-then-shard"])
    results = {k: [] for k in kinds}
    for _ in range(args.repeats):
        for kind in kinds:  # interleaved A B A B
            out = run_distributed(_rank, args.tp * args.pp, argv, args.tp, args.pp, kind != "sharded",
                                  timeout=3600)
            results[kind].append(out)
    print(f"{args.preset} TP{args.tp} x PP{args.pp}, fp32, {args.repeats} repeats (medians)")
    for kind, runs in results.items():
        grown = statistics.median(max(r[0] for r in out) for out in runs)
        own = max(r[1] for r in runs[0])
        full = runs[0][0][2]
        secs = statistics.median(max(r[3] for r in out) for out in runs)
        print(f"  {kind:16s} peak RSS growth {grown:6.2f} GiB (max over ranks) | own params {own:6.2f} GiB | "
              f"full model {full:6.2f} GiB | build {secs:6.1f} s")


if __name__ == "__main__":
    main()
