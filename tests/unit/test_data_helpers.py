"""C++ and numpy twins of the sample/blending index loops give identical arrays (FORMATS.md sections 2-3)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_code.data import helpers
from megatron_code.data.helpers import SampleIndexError, build_blending_indices, build_sample_idx

needs_cpp = pytest.mark.skipif(not helpers.cpp_available(), reason="C++ helpers not built (pip install -e .)")
IMPLS = ["numpy", pytest.param("cpp", marks=needs_cpp)]


@pytest.mark.parametrize("impl", IMPLS)
def test_formats_example_rows(impl):
    rows = build_sample_idx(np.array([5, 3, 6]), np.array([0, 1, 2]), seq_length=4, num_samples=3, impl=impl)
    assert rows.tolist() == [[0, 0], [0, 4], [2, 0], [2, 4]]
    assert rows.dtype == np.int64


def _stream(sizes, doc_idx):
    return np.concatenate([np.full(sizes[d], d) for d in doc_idx] or [np.zeros(0, int)])


@pytest.mark.parametrize("impl", IMPLS)
def test_rows_point_at_token_positions(impl):
    rng = np.random.default_rng(0)
    sizes = rng.integers(0, 9, 40).astype(np.int32)
    doc_idx = np.concatenate([rng.permutation(40) for _ in range(3)])
    S = 5
    total = int(sizes[doc_idx].sum())
    n = (total - 1) // S
    rows = build_sample_idx(sizes, doc_idx, S, n, impl=impl)
    starts = np.concatenate([[0], np.cumsum(sizes[doc_idx])[:-1]])
    for k, (pos, off) in enumerate(rows):
        assert starts[pos] + off == k * S and 0 <= off < sizes[doc_idx[pos]]
    with pytest.raises((SampleIndexError, ValueError), match="need"):
        build_sample_idx(sizes, doc_idx, S, n + 1 if total - 1 == n * S else n + 2, impl=impl)


doc_sizes = st.lists(st.integers(0, 40), min_size=1, max_size=60)


@needs_cpp
@settings(max_examples=150, deadline=None)
@given(sizes=doc_sizes, epochs=st.integers(1, 4), partial=st.floats(0.0, 1.0), seq=st.integers(1, 50),
       seed=st.integers(0, 2**31), frac=st.floats(0.0, 1.0), idx32=st.booleans())
def test_sample_idx_twins_equal(sizes, epochs, partial, seq, seed, frac, idx32):
    """Random doc sizes (incl. empty docs), several shuffled epochs plus a partial last epoch; int32 or int64
    document order."""
    sizes = np.asarray(sizes, np.int32)
    doc_idx = _order(sizes, epochs, partial, seed, np.int32 if idx32 else np.int64)
    total = int(sizes[doc_idx].sum())
    if total < 1:
        return
    n = int(frac * ((total - 1) // seq))
    a = build_sample_idx(sizes, doc_idx, seq, n, impl="numpy")
    b = build_sample_idx(sizes, doc_idx, seq, n, impl="cpp")
    assert a.dtype == b.dtype and a.shape == b.shape == (n + 1, 2)
    np.testing.assert_array_equal(a, b)


@needs_cpp
@settings(max_examples=150, deadline=None)
@given(weights=st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=1, max_size=8), size=st.integers(0, 3000))
def test_blending_twins_equal(weights, size):
    if sum(weights) <= 0:
        weights[0] = 1.0
    w = np.asarray(weights) / sum(weights)
    a = build_blending_indices(w, size, impl="numpy")
    b = build_blending_indices(w, size, impl="cpp")
    for x, y in zip(a, b):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("weights", [[0.3, 0.7], [0.5, 0.25, 0.25], [0.1, 0.2, 0.3, 0.4], [1 / 3] * 3,
                                     [0.999, 0.001]])
def test_blend_every_prefix_within_one_sample_of_target(impl, weights):
    w = np.asarray(weights)
    size = 4000
    ds_index, ds_sample = build_blending_indices(w, size, impl=impl)
    counts = np.zeros((size, w.size))
    counts[np.arange(size), ds_index] = 1
    prefix = np.cumsum(counts, axis=0)  # (size, n) samples of each dataset in the first i+1
    target = np.arange(1, size + 1)[:, None] * w[None, :]
    assert np.abs(prefix - target).max() <= 1.0 + 1e-9
    # (dataset, count) pairs are the running counts
    for d in range(w.size):
        assert ds_sample[ds_index == d].tolist() == list(range(int((ds_index == d).sum())))


@pytest.mark.parametrize("impl", IMPLS)
def test_blend_prefix_is_stable_and_ties_go_to_lowest(impl):
    short = build_blending_indices([0.5, 0.5], 10, impl=impl)
    long = build_blending_indices([0.5, 0.5], 100, impl=impl)
    np.testing.assert_array_equal(long[0][:10], short[0])
    assert short[0][:2].tolist() == [0, 1]


def _order(sizes, epochs, partial, seed, dtype=np.int64):
    rng = np.random.default_rng(seed)
    order = [rng.permutation(sizes.size) for _ in range(epochs)]
    order.append(rng.permutation(sizes.size)[: int(partial * sizes.size)])
    return np.concatenate(order).astype(dtype)


@needs_cpp
@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 30), min_size=1, max_size=40), epochs=st.integers(1, 3),
       seq=st.integers(1, 40), seed=st.integers(0, 2**31), extra=st.integers(1, 3))
def test_exhausted_order_same_error_everywhere(sizes, epochs, seq, seed, extra):
    sizes = np.asarray(sizes, np.int32)
    doc_idx = _order(sizes, epochs, 0.5, seed)
    total = int(sizes[doc_idx].sum())
    n = (max(total, 1) - 1) // seq + extra  # row n would sit at or past the last token
    with pytest.raises(SampleIndexError) as ref:
        build_sample_idx(sizes, doc_idx, seq, n, impl="numpy")
    assert "need" in str(ref.value) and f"holds {total}" in str(ref.value)
    with pytest.raises(SampleIndexError) as got:
        build_sample_idx(sizes, doc_idx, seq, n, impl="cpp")
    assert str(got.value) == str(ref.value)


@needs_cpp
@pytest.mark.parametrize("bad,dtype", [(-1, np.int64), (50, np.int64), (2**40, np.int64), (-1, np.int32),
                                       (50, np.int32), (2**31 - 1, np.int32), (-2**31, np.int32)])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_out_of_range_index_anywhere_is_an_error(bad, dtype, where):
    """Also past the last document the rows need: numpy's twin validates the whole order, so C++ does too."""
    sizes = np.full(50, 7, np.int32)
    doc_idx = np.tile(np.arange(50, dtype=dtype), 3)
    doc_idx[{"first": 0, "middle": 75, "last": -1}[where]] = bad
    for impl in ("numpy", "cpp"):
        with pytest.raises(SampleIndexError, match="doc_idx refers to a document outside sizes"):
            build_sample_idx(sizes, doc_idx, 4, 2, impl=impl)  # 2 samples need only the first 2 documents


@needs_cpp
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_no_sizes_at_all_is_an_out_of_range_error(dtype):
    """Every index is out of range; C++ must not read sizes[0] of an empty array."""
    for impl in ("numpy", "cpp"):
        with pytest.raises(SampleIndexError, match="doc_idx refers to a document outside sizes"):
            build_sample_idx(np.zeros(0, np.int32), np.zeros(3, dtype), 4, 0, impl=impl)


@needs_cpp
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
@pytest.mark.parametrize("samples", [1, 7])
def test_negative_length_is_rejected_by_cpp(dtype, samples):
    """Also when the rows are complete before the negative document (1 sample) or walk over it (7)."""
    sizes = np.full(40, 5, np.int32)
    sizes[5] = -3
    doc_idx = np.arange(40, dtype=dtype)
    with pytest.raises(SampleIndexError, match="negative document length"):
        build_sample_idx(sizes, doc_idx, 4, samples, impl="cpp")


@needs_cpp
def test_orders_of_more_than_2_to_the_32_tokens():
    """Token positions and running sums pass 2^32 (documents of up to 2^31 tokens): 64-bit arithmetic."""
    rng = np.random.default_rng(5)
    sizes = rng.integers(2**29, 2**31 - 1, 48).astype(np.int32)
    sizes[::7] = rng.integers(0, 50, sizes[::7].size)
    doc_idx = np.concatenate([rng.permutation(sizes.size) for _ in range(2)]).astype(np.int64)
    for S in (10**9, 3 * 10**9, 123_456_789):
        n = (int(sizes[doc_idx].astype(np.int64).sum()) - 1) // S
        ref = build_sample_idx(sizes, doc_idx, S, n, impl="numpy")
        for order in (doc_idx, doc_idx.astype(np.int32)):
            np.testing.assert_array_equal(build_sample_idx(sizes, order, S, n, impl="cpp"), ref)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint16, np.int16, np.uint32])
def test_document_order_of_any_integer_dtype_gives_the_same_rows(impl, dtype):
    """int32 is read as is (the datasets' order) and gives int32 rows, others are converted and give int64 rows; a
    non-contiguous int32 view also works."""
    rng = np.random.default_rng(2)
    sizes = rng.integers(0, 30, 300).astype(np.int32)
    order = np.concatenate([rng.permutation(300), rng.permutation(300)])
    n = (int(sizes[order].sum()) - 1) // 7
    ref = build_sample_idx(sizes, order.astype(np.int64), 7, n, impl="numpy")
    rows = build_sample_idx(sizes, order.astype(dtype), 7, n, impl=impl)
    assert rows.dtype == (np.int32 if dtype == np.int32 else np.int64)
    np.testing.assert_array_equal(rows, ref)
    strided = np.repeat(order.astype(np.int32), 2)[::2]
    assert not strided.flags.c_contiguous
    np.testing.assert_array_equal(build_sample_idx(sizes, strided, 7, n, impl=impl), ref)
    if impl == "cpp":  # the extension itself, without the wrapper's conversion
        np.testing.assert_array_equal(helpers._cpp.build_sample_idx(sizes, strided, 7, n), ref)


@pytest.mark.parametrize("impl", IMPLS)
def test_rows_too_large_to_allocate_are_an_error(impl):
    """A sample count whose index cannot be allocated (its byte size overflows) is a clear error in both twins; the
    extension itself raises MemoryError, not a write past a wrapped-around allocation."""
    sizes, order = np.full(4, 3, np.int32), np.arange(4, dtype=np.int32)
    with pytest.raises(SampleIndexError, match="would not fit in memory"):
        build_sample_idx(sizes, order, 1, 2**62, impl=impl)
    if impl == "cpp":
        for n in (2**62, 2**61 - 1, 2**60 + 2**59):
            with pytest.raises(MemoryError):
                helpers._cpp.build_sample_idx(sizes, order, 1, n)
