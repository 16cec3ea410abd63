#!/usr/bin/env python
"""Per-rank memory of parameters + gradients + optimizer state under ZeRO-1/2/3 at DP 4 against DP 1, measured
from the DeepSpeed engine's own tensors (not RSS), next to what the ZeRO paper predicts.

    python benchmarks/bench_zero_memory.py [--hidden 256 --layers 4 --vocab 4096] [--dp 4]

Method: the real Trainer builds the engine (fp32, CPU, gloo); one full step runs (so Adam state exists), then
the forward and backward of a second step (so gradients are live) and, before its optimizer step, every tensor
reachable from the engine is collected: module parameters (and their .grad), the ZeRO optimizer's attributes
(flat fp32 partitions, gradient partitions and buckets, ...) and the inner torch optimizer's state. Tensors are
deduplicated by storage (views into DeepSpeed's flat buffers count once) and classified:
  params     the model's working weights (module parameters, or ZeRO-3's ds_tensor partitions and their flat buffer)
  grads      .grad tensors and any ZeRO buffer whose attribute name mentions grad / ipg (bucket) / reduce
  optimizer  Adam exp_avg / exp_avg_sq and the fp32 master partitions (attribute names with fp32)
ZeRO-3's small-parameter persistence is turned off (stage3_param_persistence_threshold 0) so every parameter is
partitioned, as it would be in a model large enough to matter. Gradients are also measured at the end of the
backward pass, before DeepSpeed's boundary reduction ("grads before reduction"): ZeRO-1 holds full gradients
there and frees all but its partition after the reduction, ZeRO-2/3 reduce bucket by bucket during backward.
Sizes are deterministic (no timing), so one run suffices; every rank is measured and must agree.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from megatron_code.testing import run_distributed  # noqa: E402


def _walk(obj, path, out, seen_objs, depth=0):
    """Collect (path, tensor) for every tensor reachable from obj through attributes, lists, tuples and dicts."""
    if depth > 6 or id(obj) in seen_objs:
        return
    if torch.is_tensor(obj):
        out.append((path, obj))
        if obj.grad is not None:
            out.append((path + ".grad", obj.grad))
        return
    seen_objs.add(id(obj))
    if isinstance(obj, dict):
        for k, v in obj.items():
            _walk(v, f"{path}[{k if isinstance(k, (str, int)) else type(k).__name__}]", out, seen_objs, depth + 1)
            if torch.is_tensor(k):  # torch optimizer state is keyed by parameter tensors
                _walk(k, f"{path}<key>", out, seen_objs, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _walk(v, f"{path}[{i}]", out, seen_objs, depth + 1)
    elif hasattr(obj, "__dict__") and type(obj).__module__.split(".")[0] in ("deepspeed", "torch"):
        if isinstance(obj, torch.nn.Module) or type(obj).__name__ in ("ProcessGroup",):
            return
        for k, v in vars(obj).items():
            _walk(v, f"{path}.{k}", out, seen_objs, depth + 1)


def _category(path: str) -> str:
    p = path.lower()
    if "ipg" in p or "bucket" in p:
        return "buffers"  # fixed-size communication workspace (reduce_bucket_size), not per-parameter state
    if "state<key>" in p:
        return "master"  # the tensor the inner optimizer steps: ZeRO's fp32 partition (ZeRO-0: the parameter)
    if "exp_avg" in p or "fp32" in p or ".state[" in p:
        return "optimizer"  # Adam moments, fp32 master partitions
    if "grad" in p:
        return "grads"
    return "params"


def measure(engine) -> dict[str, int]:
    found = []
    for name, p in engine.module.named_parameters():
        found.append((f"module.{name}", p.data))
        if hasattr(p, "ds_tensor"):
            found.append((f"module.{name}.ds_tensor", p.ds_tensor))
        if p.grad is not None:
            found.append((f"module.{name}.grad", p.grad))
    _walk(engine.optimizer, "opt", found, set())
    # One storage may be reachable by several paths (a .grad viewing a bucket, a parameter viewing a flat buffer):
    # it counts once, under the most specific category any path gives it.
    rank = {"buffers": 0, "optimizer": 1, "grads": 2, "params": 3, "master": 4}
    best: dict[int, tuple[str, int]] = {}
    for path, t in found:
        if t.device.type == "meta" or t.numel() == 0:
            continue
        st = t.untyped_storage()
        if st.data_ptr() == 0:
            continue
        cat = _category(path)
        old = best.get(st.data_ptr())
        if old is None or rank[cat] < rank[old[0]]:
            best[st.data_ptr()] = (cat, st.nbytes())
    sizes: dict[str, int] = {"params": 0, "grads": 0, "optimizer": 0, "buffers": 0}
    for cat, nbytes in best.values():
        sizes["optimizer" if cat == "master" else cat] += nbytes
    return sizes


def _run(rank, world, args, stages):
    from megatron_code.config.cli import parse_args
    from megatron_code.training.trainer import Trainer

    out = {}
    for stage in stages:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump({"zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0},
                       "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
                       "gradient_accumulation_steps": "auto"}, f)
        argv = ["--preset", "tiny", "--model.vocab_size", str(args.vocab), "--model.num_layers", str(args.layers),
                "--model.hidden_size", str(args.hidden), "--model.ffn_hidden_size", str(4 * args.hidden),
                "--seq-length", "32", "--mock-data", "--micro-batch-size", "1", "--global-batch-size", str(world),
                "--train-iters", "2", "--training.progress_bar", "false", "--eval-interval", "0",
                "--zero-stage", str(stage), "--deepspeed_config", f.name]
        job = parse_args(argv).job
        stdout, sys.stdout = sys.stdout, open(os.devnull, "w")
        try:
            tr = Trainer(job)
            from megatron_code.training.data import make_loader
            from megatron_code.training.objective import Collate
            batches = iter(make_loader(tr.data.train, job, 0, tr.groups.dp_rank, tr.groups.dp_size,
                                       Collate(tr.objective, train=True)))
            tr.train_step(batches)  # step 1: Adam state now exists
            loss, _ = tr._loss(next(batches))
            before = {}
            reduce = tr.engine.allreduce_gradients

            def measured_reduce(*a, **k):  # autograd is done, the boundary reduction has not run yet
                before.update(measure(tr.engine))
                return reduce(*a, **k)

            tr.engine.allreduce_gradients = measured_reduce
            tr.engine.backward(loss)  # step 2 up to its optimizer step: gradients are live
            sizes = measure(tr.engine)
            sizes["grads_before_reduction"] = before.get("grads", -1)
            psi = sum(getattr(p, "ds_numel", p.numel()) for p in tr.engine.module.parameters())
        finally:
            sys.stdout.close()
            sys.stdout = stdout
            os.unlink(f.name)
        out[stage] = {"psi": psi, **sizes}
    return out


def predicted(stage: int, n: int, k: int) -> dict[str, float]:
    """ZeRO paper (Rajbhandari et al., 2020, sec. 5 / Fig. 1) in units of Psi, with 4-byte params/grads (fp32) and
    K bytes of optimizer state per parameter: P_os: 4 + 4 + K/N; P_os+g: 4 + (4 + K)/N; P_os+g+p: (4 + 4 + K)/N."""
    if stage == 0:
        return {"params": 4, "grads": 4, "optimizer": k}
    return {"params": 4 / n if stage == 3 else 4, "grads": 4 / n if stage >= 2 else 4, "optimizer": k / n}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--dp", type=int, default=4)
    args = ap.parse_args(argv)
    stages = [0, 1, 2, 3]
    one = run_distributed(_run, 1, args, stages, timeout=1800)[0]
    many = run_distributed(_run, args.dp, args, stages, timeout=1800)
    psi = one[0]["psi"]
    cats = ("params", "grads", "optimizer")
    spread = max(abs(m[s][c] - many[0][s][c]) for m in many for s in stages for c in cats)
    print(f"Psi = {psi:,} parameters (fp32). Bytes per rank, rank 0 (largest difference between ranks: {spread:,} B).")
    print("K = bytes of optimizer state per parameter: 8 (Adam m, v) for ZeRO-0's plain torch AdamW, 12 (m, v and "
          "the fp32 master partition DeepSpeed keeps even in fp32 training) for ZeRO 1-3.")
    print()
    print(f"| ZeRO | DP | params | grads | optimizer | total (P+G+O) | total / Psi | paper / Psi | "
          f"DP{args.dp} / DP1 measured | DP{args.dp} / DP1 paper | grads before reduction | comm buffers |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in stages:
        k = 8 if s == 0 else 12
        base = sum(one[s][c] for c in cats)
        for n, r in ((1, one[s]), (args.dp, many[0][s])):
            tot = sum(r[c] for c in cats)
            pred = sum(predicted(s, n, k).values())
            print(f"| {s} | {n} | {r['params']:,} | {r['grads']:,} | {r['optimizer']:,} | {tot:,} | {tot / psi:.2f} | "
                  f"{pred:.2f} | {tot / base:.3f} | {pred / sum(predicted(s, 1, k).values()):.3f} | "
                  f"{r['grads_before_reduction']:,} | {r['buffers']:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
