#!/usr/bin/env python
"""Fused LM head + cross-entropy (kernels/linear_cross_entropy) vs the plain PyTorch path every trainer without
it runs (``F.linear`` -> float32 logits -> ``F.cross_entropy`` -> masked mean; what transformers' causal-LM loss
does): forward + backward time, interleaved A B A B, median of the runs; and the peak memory each adds on top of
its inputs (growth of the peak RSS, VmHWM reset first, over one forward + backward in a fresh process).

    python benchmarks/bench_linear_cross_entropy.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_code.kernels.linear_cross_entropy import linear_cross_entropy  # noqa: E402
from megatron_code.testing import peak_rss_growth  # noqa: E402

SHAPES = [  # (tokens, hidden, vocab, dtype): issue 2's benchmark head, and phi-1's vocabulary at hidden 1024
    (2048, 256, 8192, torch.bfloat16),
    (2048, 256, 8192, torch.float32),
    (2048, 1024, 51200, torch.bfloat16),
]


def unfused(h, w, b, labels, mask):
    logits = F.linear(h, w, b)  # (N, V) in the compute dtype
    nll = F.cross_entropy(logits.float(), labels, reduction="none")
    return (nll * mask).sum() / mask.sum()


def fused(h, w, b, labels, mask):
    return linear_cross_entropy(h, w, b, labels, mask / mask.sum())


def one(fn, inputs):
    h, w, b, labels, mask = inputs
    leaves = [t.clone().requires_grad_() for t in (h, w, b)]
    t0 = time.perf_counter()
    fn(leaves[0], leaves[1], leaves[2], labels, mask).backward()
    return time.perf_counter() - t0


def peak_extra_mib(variant: str, n: int, hid: int, v: int, dtype: str) -> float:
    """Peak RSS growth of one forward + backward over the inputs, measured in a fresh process (ru_maxrss)."""
    code = (f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
            f"import bench_linear_cross_entropy as b; b._child({variant!r}, {n}, {hid}, {v}, {dtype!r})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _child(variant: str, n: int, hid: int, v: int, dtype: str) -> None:
    inputs = make_inputs(n, hid, v, getattr(torch, dtype))
    leaves = [t.clone().requires_grad_() for t in inputs[:3]]
    with peak_rss_growth() as grown:  # only this forward + backward counts
        {"unfused": unfused, "fused": fused}[variant](leaves[0], leaves[1], leaves[2], *inputs[3:]).backward()
    print(grown.mib)


def make_inputs(n: int, hid: int, v: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(n, hid, generator=g).to(dtype), (torch.randn(v, hid, generator=g) * 0.02).to(dtype),
            torch.zeros(v, dtype=dtype), torch.randint(0, v, (n,), generator=g), torch.ones(n))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    for n, hid, v, dtype in SHAPES:
        inputs = make_inputs(n, hid, v, dtype)
        ref, got = unfused(*inputs), fused(*inputs)
        assert torch.allclose(ref, got, rtol=1e-4), (float(ref), float(got))
        one(unfused, inputs), one(fused, inputs)  # warm up
        times = {"unfused": [], "fused": []}
        for _ in range(args.repeats):
            times["unfused"].append(one(unfused, inputs))
            times["fused"].append(one(fused, inputs))
        med = {k: statistics.median(x) for k, x in times.items()}
        name = str(dtype).replace("torch.", "")
        mem = {k: peak_extra_mib(k, n, hid, v, name) for k in ("unfused", "fused")}
        print(f"N={n} H={hid} V={v} {name}: unfused {med['unfused'] * 1e3:.1f} ms, fused {med['fused'] * 1e3:.1f} ms "
              f"-> {med['unfused'] / med['fused']:.2f}x; peak memory unfused {mem['unfused']:.0f} MiB, fused "
              f"{mem['fused']:.0f} MiB ({mem['unfused'] / mem['fused']:.1f}x less)"
              f"  (runs ms: unfused {', '.join(f'{x * 1e3:.0f}' for x in times['unfused'])}; "
              f"fused {', '.join(f'{x * 1e3:.0f}' for x in times['fused'])})")


if __name__ == "__main__":
    main()
