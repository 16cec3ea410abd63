"""csrc/minhash.cpp against its numpy twin (dedup.py): same tokens, same XXH64, same signatures, on fuzzed
ASCII, non-ASCII, lone-surrogate and whitespace-only text; and the bounded-memory sorter against np.sort."""

from __future__ import annotations

import random

import numpy as np
import pytest
import xxhash

from megatron_code.curation import dedup
from megatron_code.curation.dedup import (CodeMinhashSignature, NearDedupParams, SpillingSorter, code_tokens,
                                          signature_numpy, token_hashes_numpy)

ext = dedup._native()
native = pytest.mark.skipif(ext is None, reason="megatron_code.curation._minhash_cpp not built (or disabled)")
ALPHABET = list("abcXYZ_019 \t\n\r\v\f()[]{}.,;:=+-*/#'\"\\@") + ["é", "λ", "中", "😀", "\u00a0", "\u2028", "\ud800"]


def fuzz(rng: random.Random, n: int) -> list[str]:
    texts = ["", "   \n\t", "x", "a b", "def f(x):\n    return x + 1\n", "é" * 40, "\ud800x\udfff", "(" * 70]
    for _ in range(n):
        texts.append("".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 300))))
    return texts


@native
def test_xxh64_and_tokens_match_the_twin():
    rng = random.Random(0)
    for length in list(range(0, 70)) + [1000]:
        data = bytes(rng.randrange(256) for _ in range(length))
        assert ext.xxh64(data) == xxhash.xxh64_intdigest(data)
    for t in fuzz(rng, 200):
        assert ext.token_hashes(t.encode("utf-8", "surrogatepass")).tolist() == token_hashes_numpy(t).tolist()
    assert code_tokens("naïve_x=1\u00a0+ λ") == ["naïve_x", "=", "1\u00a0", "+", "λ"]  # non-ASCII: word characters


@native
@pytest.mark.parametrize("n_grams", [1, 5])
def test_native_signatures_equal_numpy_twin(tmp_path, n_grams):
    step = CodeMinhashSignature(str(tmp_path), NearDedupParams(n_grams=n_grams).config())
    a, b = step.permutations()
    texts = fuzz(random.Random(n_grams), 150)
    sigs, ok = ext.signatures([t.encode("utf-8", "surrogatepass") for t in texts], n_grams, a, b)
    for t, s, k in zip(texts, sigs, ok):
        twin = signature_numpy(t, n_grams, a, b)
        assert k == (twin is not None)
        if twin is not None:
            assert s.tolist() == twin.tolist()
            assert int(s.max()) < 2 ** 32


def test_spilling_sorter_equals_in_memory_sort(tmp_path):
    from datatrove.io import get_datafolder

    dtype = np.dtype([("field1", "<u8"), ("field2", "<u8"), ("field3", "<u4")])
    rng = np.random.default_rng(0)
    rec = np.empty(5000, dtype=dtype)
    rec["field1"] = rng.integers(0, 50, 5000)  # many ties: the later fields decide
    rec["field2"] = rng.integers(0, 2 ** 63, 5000, dtype=np.uint64)
    rec["field3"] = np.arange(5000)
    folder = get_datafolder(str(tmp_path))
    for capacity, fan_in in ((7, 16), (640, 128), (10 ** 6, 128)):  # cascaded merges, one merge, no spill
        s = SpillingSorter(folder, f"out{capacity}", f"runs/{capacity}_", dtype, capacity)
        s.fan_in = fan_in
        for i in range(0, 5000, 333):
            s.add(rec[i:i + 333])
        assert s.finish() == 5000
        got = np.frombuffer((tmp_path / f"out{capacity}").read_bytes(), dtype=dtype)
        assert got.tobytes() == np.sort(rec, order=list(dtype.names)).tobytes()
    assert not any((tmp_path / "runs").iterdir())  # runs deleted after the merge
