#!/usr/bin/env python
"""Sample-index and blending-index build time: the C++ helpers (plain loops) against the numpy twin (same inputs,
same outputs).

Synthetic dataset: 5M documents, 2B tokens (sizes drawn log-normally, rescaled), one shuffled epoch, S=2048.
The document order is int32, as GPTDataset builds it (Megatron's dtype too); the same order as int64 is timed as
well. Runs are interleaved C++, numpy, C++ int64, numpy int64, ... and the median of each is reported, with the
ratio of numpy to C++ for the same input. `--peer-so PATH` also times another build of the extension (e.g. an
earlier csrc/helpers.cpp from git, built with `python setup.py build_ext --inplace` and copied aside), interleaved
with the others, for an A/B of two C++ versions.

    python benchmarks/bench_sample_index.py --repeats 5
    python benchmarks/bench_sample_index.py --docs 500000 --tokens 200000000 --repeats 5   # smaller
    python benchmarks/bench_sample_index.py --peer-so /tmp/old/_helpers_cpp.cpython-311-x86_64-linux-gnu.so
"""

from __future__ import annotations

import argparse
import os
import statistics
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


def load_peer(path: str):
    """Another build of the extension (its module init is named _helpers_cpp whatever file holds it)."""
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.ExtensionFileLoader("_helpers_cpp", path)
    spec = importlib.util.spec_from_file_location("_helpers_cpp", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=5_000_000)
    ap.add_argument("--tokens", type=int, default=2_000_000_000)
    ap.add_argument("--seq-length", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--blend-samples", type=int, default=1_000_000)
    ap.add_argument("--blend-datasets", type=int, default=4)
    ap.add_argument("--python-loop", action="store_true", help="also time a plain Python loop once (reference)")
    ap.add_argument("--peer-so", help="also time this build of the _helpers_cpp extension (A/B of C++ versions)")
    args = ap.parse_args()
    if not helpers.cpp_available():
        raise SystemExit("C++ helpers not built: pip install -e . --no-build-isolation")
    sizes, doc_idx64 = synthetic(args.docs, args.tokens)
    doc_idx = doc_idx64.astype(np.int32)
    total = int(sizes.sum(dtype=np.int64))
    n = (total - 1) // args.seq_length
    print(f"dataset: {args.docs} docs, {total} tokens, S={args.seq_length}, {n} samples; {os.cpu_count()} cores")
    fns = {
        "cpp": lambda: helpers.build_sample_idx(sizes, doc_idx, args.seq_length, n, impl="cpp"),
        "numpy": lambda: helpers.build_sample_idx(sizes, doc_idx, args.seq_length, n, impl="numpy"),
        "cpp_int64": lambda: helpers.build_sample_idx(sizes, doc_idx64, args.seq_length, n, impl="cpp"),
        "numpy_int64": lambda: helpers.build_sample_idx(sizes, doc_idx64, args.seq_length, n, impl="numpy"),
    }
    pairs = [("numpy", "cpp"), ("numpy_int64", "cpp_int64")]
    if args.peer_so:
        peer = load_peer(args.peer_so)
        fns["peer_cpp"] = lambda: peer.build_sample_idx(sizes, doc_idx, args.seq_length, n)
        pairs += [("numpy", "peer_cpp"), ("cpp", "peer_cpp")]
    _, outs = interleave("sample index", fns, args.repeats, pairs=pairs)
    for name in [k for k in fns if k != "numpy"]:
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
