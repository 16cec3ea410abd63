"""Run by tests/unit/test_helpers_asan.py in a process with AddressSanitizer preloaded: drives the C++ sample-index
builder (compiled with -fsanitize=address, imported from the directory in argv[1]) through every thread split, block
size, SIMD choice and 16-bit table choice on inputs that reach its edges, and compares each result (or error) with
the numpy twin. Any out-of-bounds read or write aborts the process with an AddressSanitizer report."""

import os
import sys

import numpy as np

sys.path.insert(0, sys.argv[1])
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _helpers_cpp as asan  # noqa: E402
from test_data_helpers import _cpp_configs  # noqa: E402  (the configurations the unit tests compare)

from megatron_code.data import helpers  # noqa: E402

CONFIGS = _cpp_configs()
NEGATIVE = "sizes holds a negative document length"


def outcome(fn):
    try:
        return fn()
    except ValueError as exc:
        return str(exc)


def check(sizes, doc_idx, seq, n):
    """Same rows, or the same error, as the numpy twin; which does not check lengths for sign, so with a negative
    length (and every index in range) the C++ error is the expected outcome."""
    ref = outcome(lambda: helpers.build_sample_idx(sizes, doc_idx, seq, n, impl="numpy"))
    in_range = doc_idx.size == 0 or (doc_idx.min() >= 0 and doc_idx.max() < sizes.size)
    if in_range and (sizes[doc_idx] < 0).any():
        ref = NEGATIVE
    for threads, block, simd, front, narrow in CONFIGS:
        got = outcome(lambda: asan.build_sample_idx(sizes, doc_idx, seq, n, threads=threads, block=block, simd=simd,
                                                    front_blocks=front, narrow=narrow))
        config = (threads, block, simd, front, narrow)
        if isinstance(ref, str):
            assert got == ref, (got, ref, config)
        else:
            assert not isinstance(got, str), (got, config)
            assert got.dtype == ref.dtype and np.array_equal(got, ref), config


def main():
    rng = np.random.default_rng(0)
    cases = 0
    for dtype in (np.int32, np.int64):
        check(np.zeros(0, np.int32), np.zeros(3, dtype), 4, 0)  # no sizes: every index is out of range
        check(np.zeros(5, np.int32), np.zeros(0, dtype), 4, 0)  # no documents
        for trial in range(20):
            k = int(rng.integers(1, 90))
            pool = [0, 1, 2, 0xfffe, 0xffff, 0x10000, 7_000_000] if trial % 3 == 0 else [0, 1, 5, 40]
            sizes = np.where(rng.random(k) < 0.2, rng.choice(pool, k), rng.integers(0, 70, k)).astype(np.int32)
            if trial % 7 == 0:
                sizes[rng.integers(k)] = -3  # a negative length
            order = np.concatenate([rng.permutation(k) for _ in range(int(rng.integers(1, 4)))]).astype(dtype)
            if trial % 5 == 0:  # an index out of range, anywhere
                order[rng.integers(order.size)] = rng.choice([-1, k, 2**31 - 1])
            total = int(np.clip(sizes, 0, None)[np.clip(order, 0, k - 1)].astype(np.int64).sum())
            seq = int(rng.choice([1, 3, 17, 0xffff, 0x10001]))
            n = int(rng.integers(0, max(1, (total - 1) // seq) + 2))  # also past the end: too few tokens
            check(sizes, order, seq, n)
            cases += 1
    # more than 2^32 tokens per block (helpers fall back to 32-bit lengths)
    sizes = rng.integers(2**29, 2**31 - 1, 24).astype(np.int32)
    order = np.concatenate([rng.permutation(24) for _ in range(2)]).astype(np.int32)
    check(sizes, order, 10**9, (int(sizes[order].astype(np.int64).sum()) - 1) // 10**9)
    print(f"asan ok: {cases + 5} inputs x {len(CONFIGS)} configurations")


if __name__ == "__main__":
    main()
