#!/usr/bin/env python
"""Sample-index and blending-index build time: C++ helpers against the numpy twin (same inputs, same outputs).

Synthetic dataset: 5M documents, 2B tokens (sizes drawn log-normally, rescaled), one shuffled epoch, S=2048.
The document order is int32, as GPTDataset builds it (Megatron's dtype too); the same order as int64 (what the
datasets used before) is timed as well. Runs are interleaved C++ (automatic threads), C++ (one thread), numpy,
C++ int64, numpy int64, ... and the median of each is reported, with the ratio of numpy to C++ for the same input.
The C++ helper uses up to min(cores, 4) threads on inputs this large.

Two protocols: repeated builds in this process (the default), and `--fresh-processes`, where every build is the first
and only one of a new Python process (how indexes are built in practice: once, by tools/build_index.py or rank 0),
so neither side reuses memory an earlier build freed. Builds alternate C++, C++ one thread, numpy in both.

    python benchmarks/bench_sample_index.py --repeats 5
    python benchmarks/bench_sample_index.py --docs 500000 --tokens 200000000 --repeats 5   # smaller
    python benchmarks/bench_sample_index.py --fresh-processes --repeats 9
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from megatron_code.data import helpers


def synthetic(num_docs: int, num_tokens: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    sizes = rng.lognormal(mean=5.0, sigma=1.0, size=num_docs)
    sizes = np.maximum(1, np.round(sizes * (num_tokens / sizes.sum()))).astype(np.int32)
    doc_idx = rng.permutation(num_docs).astype(np.int64)
    return sizes, doc_idx


def python_loop_sample_idx(sizes, doc_idx, seq_length, num_samples):
    """Reference point only: the straightforward per-document Python walk (how a loop-based fallback, like
    Megatron's original Python helper, would do it). Not used by the package."""
    out = np.empty((num_samples + 1, 2), dtype=np.int64)
    sizes_l = sizes.tolist()
    order = doc_idx.tolist()
    di, off = 0, 0
    for k in range(num_samples + 1):
        if k:
            off += seq_length
        while off >= sizes_l[order[di]]:
            off -= sizes_l[order[di]]
            di += 1
        out[k, 0] = di
        out[k, 1] = off
    return out


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def interleave(label, fns, repeats, pairs=None):
    """fns: {name: callable}; returns the medians and last outputs, measured A B C A B C...; pairs: (reference,
    peer) names whose median ratio is printed (default: the last one against each other)."""
    times = {k: [] for k in fns}
    outs = {}
    for r in range(repeats):
        for name, fn in fns.items():
            dt, out = timed(fn)
            times[name].append(dt)
            outs[name] = out
    return report(label, times, pairs), outs


def report(label, times, pairs=None):
    """Prints each peer's median and runs, and the ratios of medians; returns the medians."""
    med = {k: statistics.median(v) for k, v in times.items()}
    names = list(times)
    print(f"{label}: " + ", ".join(f"{k} median {med[k]:.3f} s (runs {', '.join(f'{x:.3f}' for x in times[k])})"
                                   for k in names))
    for ref, name in pairs or [(names[-1], n) for n in names[:-1]]:
        print(f"  ratio {ref}/{name} = {med[ref] / med[name]:.1f}x")
    return med


ONE_SHOT = {"cpp": dict(impl="cpp"), "cpp_1thread": dict(impl="cpp", threads=1), "numpy": dict(impl="numpy")}


def one_shot(args):
    """In a new process: make the dataset, time one build, print its seconds and a digest of the rows."""
    sizes, doc_idx64 = synthetic(args.docs, args.tokens)
    doc_idx = doc_idx64.astype(np.int32)
    n = (int(sizes.sum(dtype=np.int64)) - 1) // args.seq_length
    dt, rows = timed(lambda: helpers.build_sample_idx(sizes, doc_idx, args.seq_length, n, **ONE_SHOT[args.one_shot]))
    print(json.dumps({"seconds": dt, "rows": hashlib.sha1(rows.tobytes()).hexdigest()}))


def fresh_processes(args):
    times, digests = {k: [] for k in ONE_SHOT}, set()
    for r in range(args.repeats):
        for name in ONE_SHOT:
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--one-shot", name, "--docs",
                                  str(args.docs), "--tokens", str(args.tokens), "--seq-length", str(args.seq_length)],
                                 check=True, capture_output=True, text=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            times[name].append(result["seconds"])
            digests.add(result["rows"])
    assert len(digests) == 1, "twins disagree"
    report("sample index, each build the first of a new process", times,
           pairs=[("numpy", "cpp"), ("numpy", "cpp_1thread")])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=5_000_000)
    ap.add_argument("--tokens", type=int, default=2_000_000_000)
    ap.add_argument("--seq-length", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--blend-samples", type=int, default=1_000_000)
    ap.add_argument("--blend-datasets", type=int, default=4)
    ap.add_argument("--python-loop", action="store_true", help="also time a plain Python loop once (reference)")
    ap.add_argument("--fresh-processes", action="store_true",
                    help="time each sample-index build as the first and only one of a new process")
    ap.add_argument("--one-shot", choices=sorted(ONE_SHOT), help=argparse.SUPPRESS)  # the child of --fresh-processes
    args = ap.parse_args()
    if not helpers.cpp_available():
        raise SystemExit("C++ helpers not built: pip install -e . --no-build-isolation")
    if args.one_shot:
        return one_shot(args)
    if args.fresh_processes:
        print(f"dataset: {args.docs} docs, {args.tokens} tokens (target), S={args.seq_length}; {os.cpu_count()} cores")
        return fresh_processes(args)
    sizes, doc_idx64 = synthetic(args.docs, args.tokens)
    doc_idx = doc_idx64.astype(np.int32)
    total = int(sizes.sum(dtype=np.int64))
    n = (total - 1) // args.seq_length
    print(f"dataset: {args.docs} docs, {total} tokens, S={args.seq_length}, {n} samples; {os.cpu_count()} cores")
    _, outs = interleave("sample index", {
        "cpp": lambda: helpers.build_sample_idx(sizes, doc_idx, args.seq_length, n, impl="cpp"),
        "cpp_1thread": lambda: helpers.build_sample_idx(sizes, doc_idx, args.seq_length, n, impl="cpp", threads=1),
        "numpy": lambda: helpers.build_sample_idx(sizes, doc_idx, args.seq_length, n, impl="numpy"),
        "cpp_int64": lambda: helpers.build_sample_idx(sizes, doc_idx64, args.seq_length, n, impl="cpp"),
        "numpy_int64": lambda: helpers.build_sample_idx(sizes, doc_idx64, args.seq_length, n, impl="numpy"),
    }, args.repeats, pairs=[("numpy", "cpp"), ("numpy", "cpp_1thread"), ("numpy_int64", "cpp_int64")])
    for name in ("cpp", "cpp_1thread", "cpp_int64", "numpy_int64"):
        assert np.array_equal(outs[name], outs["numpy"]), f"{name} and numpy disagree"
    if args.python_loop:
        dt, ref = timed(lambda: python_loop_sample_idx(sizes, doc_idx, args.seq_length, n))
        assert np.array_equal(ref, outs["cpp"])
        print(f"  reference: per-document Python loop {dt:.2f} s (one run)")
    w = np.random.default_rng(1).random(args.blend_datasets)
    w /= w.sum()
    _, outs = interleave(f"blending index ({args.blend_datasets} datasets, {args.blend_samples} samples)", {
        "cpp": lambda: helpers.build_blending_indices(w, args.blend_samples, impl="cpp"),
        "numpy": lambda: helpers.build_blending_indices(w, args.blend_samples, impl="numpy"),
    }, max(3, args.repeats // 2))
    assert all(np.array_equal(a, b) for a, b in zip(outs["cpp"], outs["numpy"])), "twins disagree"


if __name__ == "__main__":
    main()
