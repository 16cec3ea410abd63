"""Sample-index and blending-index loops: C++ (``_helpers_cpp``, built at install time) with a numpy twin.

Both implementations return identical arrays; ``impl="auto"`` uses C++ when the extension was built.
Nothing is compiled at run time (a 512-rank job must not race a compiler); without the extension the numpy twin
is used, slower but equal (tests/unit/test_data_helpers.py checks equality on random inputs).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy as np

from ..errors import UserError
from ..utils import atomic

try:  # built by setup.py from csrc/helpers.cpp
    from . import _helpers_cpp as _cpp
except ImportError:  # no compiler at install time: numpy twin
    _cpp = None


class SampleIndexError(UserError, ValueError):
    pass


def cpp_available() -> bool:
    return _cpp is not None


def _pick(impl: str):
    if impl == "auto":
        return "cpp" if _cpp is not None else "numpy"
    if impl == "cpp" and _cpp is None:
        raise ImportError("megatron_code.data._helpers_cpp is not built; run `pip install -e .` (needs a C++ "
                          "compiler and pybind11) or use impl='numpy'")
    if impl not in ("cpp", "numpy"):
        raise ValueError(f"impl must be auto, cpp or numpy, not {impl!r}")
    return impl


def build_sample_idx(sizes, doc_idx, seq_length: int, num_samples: int, impl: str = "auto") -> np.ndarray:
    """Rows of (position in ``doc_idx``, token offset) for packed samples; shape (num_samples + 1, 2).

    Row ``k`` is token position ``k * seq_length`` of the stream formed by concatenating documents
    ``sizes[doc_idx[0]], sizes[doc_idx[1]], ...``. Sample ``k`` covers rows ``k`` to ``k+1`` *inclusive*
    (seq_length + 1 tokens; the last token of sample k is the first of sample k+1). Zero-length documents are
    skipped, so a row always points at an existing token. FORMATS.md section 2: S=4, sizes [5,3,6] ->
    (0,0),(0,4),(2,0),(2,4).

    ``doc_idx`` may be int32 or int64 (other integer types are converted to int64). The rows have its dtype: int32
    for an int32 order of fewer than 2^31 entries (positions and offsets fit; Megatron's dtype, half the bytes to
    write and cache), else int64; the values are the same.
    Raises SampleIndexError when any ``doc_idx`` entry (also past the last needed one) is outside ``sizes``, or
    when the order holds too few tokens (C++ also rejects negative lengths, which the .idx reader never yields).
    """
    sizes = np.ascontiguousarray(sizes, dtype=np.int32)
    doc_idx = np.asarray(doc_idx)  # int32 (the datasets' order below 2^31 documents) is read as is, else int64
    idx32 = doc_idx.dtype == np.int32 and doc_idx.size <= np.iinfo(np.int32).max
    doc_idx = np.ascontiguousarray(doc_idx, dtype=np.int32 if idx32 else np.int64)
    if seq_length < 1:
        raise SampleIndexError(f"seq_length must be >= 1, got {seq_length}")
    if num_samples < 0:
        raise SampleIndexError(f"num_samples must be >= 0, got {num_samples}")
    if (num_samples + 1) * 16 > sys.maxsize:
        raise SampleIndexError(f"{num_samples} samples: their index would not fit in memory (too many samples "
                               f"asked for; check --train-iters / --train-samples and the global batch size)")
    if _pick(impl) == "cpp":
        # The C++ pass bounds-checks every doc_idx entry while it reads it (same contract and text as below), so
        # the two extra numpy passes (min, max) are not needed here.
        try:
            return _cpp.build_sample_idx(sizes, doc_idx, int(seq_length), int(num_samples))
        except ValueError as exc:
            raise SampleIndexError(str(exc)) from None
    if doc_idx.size and (doc_idx.min() < 0 or doc_idx.max() >= sizes.size):
        raise SampleIndexError("doc_idx refers to a document outside sizes")
    return _build_sample_idx_numpy(sizes, doc_idx, seq_length, num_samples)


def _build_sample_idx_numpy(sizes, doc_idx, seq_length, num_samples):
    # np.take, not sizes[doc_idx]: fancy indexing with int32 indices converts them first (measured 1.3x slower)
    lens = np.take(sizes, doc_idx)
    ends = np.cumsum(lens, dtype=np.int64)  # exclusive end position of each entry of doc_idx, (K,)
    positions = np.arange(num_samples + 1, dtype=np.int64) * seq_length
    total = int(ends[-1]) if ends.size else 0
    if positions[-1] >= total:
        raise SampleIndexError(f"{num_samples} samples of {seq_length}+1 tokens need "
                               f"{num_samples * seq_length + 1} tokens but the document order holds {total}")
    where = np.searchsorted(ends, positions, side="right")  # first entry ending after the position
    out = np.empty((num_samples + 1, 2), dtype=doc_idx.dtype)
    out[:, 0] = where
    out[:, 1] = positions - (ends[where] - lens[where])
    return out


def build_blending_indices(weights, size: int, impl: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Greedy deterministic interleave (FORMATS.md section 3).

    For sample i pick the dataset with the largest ``w_d * max(i, 1) - count_d`` (lowest index wins ties),
    record ``(d, count_d)`` and increment ``count_d``. Returns ``dataset_index`` (int16, (size,)) and
    ``dataset_sample_index`` (int64, (size,)). A prefix of a longer interleave equals the shorter one.
    """
    weights = np.ascontiguousarray(weights, dtype=np.float64)
    if weights.ndim != 1 or weights.size == 0 or weights.size > np.iinfo(np.int16).max:
        raise SampleIndexError(f"need 1..32767 blend weights, got shape {weights.shape}")
    if _pick(impl) == "cpp":
        return _cpp.build_blending_indices(weights, int(size))
    return _build_blending_indices_numpy(weights, size)


def _build_blending_indices_numpy(weights, size):
    # A Python loop on purpose: each step depends on the previous counts. Plain floats are IEEE doubles, so
    # ``w * i - c`` rounds exactly as the C++ loop does.
    w = [float(x) for x in weights]
    counts = [0] * len(w)
    n = len(w)
    ds_index = np.empty(size, dtype=np.int16)
    ds_sample = np.empty(size, dtype=np.int64)
    for i in range(size):
        denom = float(max(i, 1))
        best, best_err = 0, w[0] * denom - counts[0]
        for d in range(1, n):
            err = w[d] * denom - counts[d]
            if err > best_err:
                best, best_err = d, err
        ds_index[i] = best
        ds_sample[i] = counts[best]
        counts[best] += 1
    return ds_index, ds_sample


# --- .npy caches ---------------------------------------------------------------------------------------------
# One rank (or tools/build_index.py) builds; the others load with mmap_mode="r". Files are written under a
# temporary name and renamed, and the description file goes last, so a reader never sees a half-written cache.

class IndexCacheMissing(UserError, FileNotFoundError):
    pass


class IndexCache:
    """``cache_dir=None`` keeps everything in memory (always builds). ``load_only=True`` never builds: a missing
    cache is an error (used by non-builder ranks after the barrier)."""

    def __init__(self, cache_dir: str | None, load_only: bool = False):
        self.cache_dir = cache_dir
        self.load_only = load_only

    @staticmethod
    def key(description: dict) -> str:
        text = json.dumps(description, sort_keys=True, default=str)
        return hashlib.md5(text.encode()).hexdigest()

    def paths(self, description: dict, names) -> dict[str, str]:
        key = self.key(description)
        cls = description.get("class", "index")
        return {n: os.path.join(self.cache_dir, f"{key}-{cls}-{n}.npy") for n in names}

    def get_or_build(self, description: dict, build, names=None) -> dict[str, np.ndarray]:
        """Arrays named by ``build()``'s keys: loaded if cached, else built (and saved when a dir is set)."""
        if self.cache_dir is None:
            if self.load_only:
                raise IndexCacheMissing("load_only needs a cache directory (--data-cache-path)")
            return build()
        names = names or description.get("_arrays")
        key = self.key(description)
        cls = description.get("class", "index")
        desc_path = os.path.join(self.cache_dir, f"{key}-{cls}-description.json")
        if os.path.isfile(desc_path):
            with open(desc_path) as f:
                stored = json.load(f)
            arrays = {}
            for n in stored["arrays"]:
                arrays[n] = np.load(os.path.join(self.cache_dir, f"{key}-{cls}-{n}.npy"), mmap_mode="r")
            return arrays
        if self.load_only:
            raise IndexCacheMissing(f"index cache {desc_path} is missing: the builder rank did not write it (is "
                                    f"--data-cache-path on a filesystem all ranks share?) or build it ahead with "
                                    f"tools/build_index.py")
        arrays = build()
        os.makedirs(self.cache_dir, exist_ok=True)
        for n, arr in arrays.items():
            with atomic.atomic_open(os.path.join(self.cache_dir, f"{key}-{cls}-{n}.npy"), "wb") as f:
                np.save(f, np.ascontiguousarray(arr))
        # The description is written last: its presence means every array is complete.
        atomic.write_text(desc_path, json.dumps({"description": description, "arrays": sorted(arrays)}, indent=1,
                                                sort_keys=True, default=str))
        return {n: np.load(os.path.join(self.cache_dir, f"{key}-{cls}-{n}.npy"), mmap_mode="r") for n in arrays}
