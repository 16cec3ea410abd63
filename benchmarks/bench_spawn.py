"""Start-up cost of the multi-process test helper: forkserver with torch/deepspeed preloaded (ours, default) versus
plain torch.multiprocessing "spawn". Rounds are interleaved A B A B ...; the median per peer is reported.

    python benchmarks/bench_spawn.py --world 2 --rounds 5
"""

import argparse
import os
import statistics
import time

from megatron_code.testing import run_distributed


def _barrier(rank, world):
    import torch
    import torch.distributed as dist

    x = torch.ones(1)
    dist.all_reduce(x)
    return x.item()


def _timed(method: str, world: int) -> float:
    os.environ["MC_SPAWN_METHOD"] = method
    start = time.perf_counter()
    assert run_distributed(_barrier, world, timeout=300) == [float(world)] * world
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    first = _timed("forkserver", args.world)  # one-time server start (imports torch, deepspeed)
    times = {"spawn": [], "forkserver": []}
    for _ in range(args.rounds):
        for method in ("spawn", "forkserver"):
            times[method].append(_timed(method, args.world))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"load average {os.getloadavg()[0]:.1f}; world {args.world}; rounds {args.rounds}")
    print(f"forkserver first start (once per test session): {first:.2f} s")
    for k, v in times.items():
        print(f"{k:10s} median {med[k]:.2f} s  runs {', '.join(f'{t:.2f}' for t in v)}")
    print(f"speed-up forkserver vs spawn: {med['spawn'] / med['forkserver']:.1f}x")


if __name__ == "__main__":
    main()
