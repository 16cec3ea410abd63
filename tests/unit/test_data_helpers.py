"""C++ and numpy twins of the sample/blending index loops give identical arrays (FORMATS.md sections 2-3)."""

import gc
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_code.data import helpers
from megatron_code.data.helpers import SampleIndexError, build_blending_indices, build_sample_idx
from megatron_code.testing import peak_rss_growth

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


# --- C++ thread split (threads / block / simd only change speed) ---------------------------------------------
# Small blocks make tiny inputs span many blocks, and front_blocks caps how many thread 0 walks (otherwise it
# finishes a tiny input before a helper thread starts), so the front walk, the helpers' buffered blocks and the
# walk of the buffered part by several threads all meet on hypothesis-sized inputs.

def _order(sizes, epochs, partial, seed, dtype=np.int64):
    rng = np.random.default_rng(seed)
    order = [rng.permutation(sizes.size) for _ in range(epochs)]
    order.append(rng.permutation(sizes.size)[: int(partial * sizes.size)])
    return np.concatenate(order).astype(dtype)


def _cpp_configs():
    # (threads, block, simd, front_blocks, narrow); front_blocks 0: the helpers gather every block; narrow 1: the
    # gathers read the 16-bit copy of sizes (escaping to sizes), 0: sizes itself
    single = [(1, b, simd, -1, narrow) for b in (1, 5, 0) for simd in (True, False) for narrow in (0, 1)]
    return single + [(t, b, simd, f, narrow) for t in (2, 3) for b in (1, 2, 5, 0) for simd in (True, False)
                     for f in (0, 1, 3, -1) for narrow in (0, 1)]


@needs_cpp
@settings(max_examples=120, deadline=None)
@given(sizes=st.lists(st.integers(0, 60), min_size=1, max_size=80), epochs=st.integers(1, 3),
       partial=st.floats(0.0, 1.0), seq=st.integers(1, 70), seed=st.integers(0, 2**31), frac=st.floats(0.0, 1.0),
       idx32=st.booleans())
def test_sample_idx_thread_splits_equal_numpy(sizes, epochs, partial, seq, seed, frac, idx32):
    """Zero-length docs, documents longer than seq (several rows in one document), multi-epoch, partial last
    epoch, and num_samples anywhere from 0 to the maximum (rows done long before the order ends); the int32 and
    int64 paths (16 and 8 documents per AVX-512 gather)."""
    sizes = np.asarray(sizes, np.int32)
    doc_idx = _order(sizes, epochs, partial, seed, np.int32 if idx32 else np.int64)
    total = int(sizes[doc_idx].sum())
    if total < 1:
        return
    n = int(frac * ((total - 1) // seq))
    ref = build_sample_idx(sizes, doc_idx, seq, n, impl="numpy")
    for config in _cpp_configs():
        out = _cpp(sizes, doc_idx, seq, n, *config)
        assert out.dtype == ref.dtype
        np.testing.assert_array_equal(out, ref, err_msg=str(config))


def _cpp(sizes, doc_idx, seq, n, threads, block, simd, front_blocks, narrow=-1):
    """The extension directly (block, simd, front_blocks, narrow are not exposed by the wrapper), errors as the
    wrapper raises them."""
    try:
        return helpers._cpp.build_sample_idx(sizes, doc_idx, seq, n, threads=threads, block=block, simd=simd,
                                             front_blocks=front_blocks, narrow=narrow)
    except ValueError as exc:
        raise SampleIndexError(str(exc)) from None


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
    for config in _cpp_configs():
        with pytest.raises(SampleIndexError) as got:
            _cpp(sizes, doc_idx, seq, n, *config)
        assert str(got.value) == str(ref.value), config


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
    for config in _cpp_configs():
        with pytest.raises(SampleIndexError, match="doc_idx refers to a document outside sizes"):
            _cpp(sizes, doc_idx, 4, 2, *config)


@needs_cpp
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_no_sizes_at_all_is_an_out_of_range_error(dtype):
    """Every index is out of range; the scalar C++ paths must not read sizes[0] of an empty array."""
    for impl in ("numpy", "cpp"):
        with pytest.raises(SampleIndexError, match="doc_idx refers to a document outside sizes"):
            build_sample_idx(np.zeros(0, np.int32), np.zeros(3, dtype), 4, 0, impl=impl)
    for config in _cpp_configs():
        with pytest.raises(SampleIndexError, match="doc_idx refers to a document outside sizes"):
            _cpp(np.zeros(0, np.int32), np.zeros(3, dtype), 4, 0, *config)


@needs_cpp
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_negative_length_is_rejected_by_cpp_whatever_the_split(dtype):
    sizes = np.full(40, 5, np.int32)
    sizes[33] = -3
    doc_idx = np.arange(40, dtype=dtype)
    for config in _cpp_configs():  # also when the rows are complete before document 33
        with pytest.raises(SampleIndexError, match="negative document length"):
            _cpp(sizes, doc_idx, 4, 1, *config)


@needs_cpp
def test_automatic_threads_equal_single_thread_on_a_large_order():
    """Large enough (>= 2 default blocks of 65,536 documents per thread) for the automatic choice to use 2+
    threads on a machine with 2+ cores."""
    rng = np.random.default_rng(3)
    sizes = np.maximum(0, rng.lognormal(4.0, 1.2, 200_000)).astype(np.int32)
    doc_idx = np.concatenate([rng.permutation(sizes.size), rng.permutation(sizes.size)[:100_000]]).astype(np.int64)
    S = 512
    n = (int(sizes[doc_idx].sum()) - 1) // S
    single = build_sample_idx(sizes, doc_idx, S, n, impl="cpp", threads=1)
    np.testing.assert_array_equal(build_sample_idx(sizes, doc_idx, S, n, impl="cpp"), single)
    np.testing.assert_array_equal(build_sample_idx(sizes, doc_idx, S, n, impl="numpy"), single)


@needs_cpp
def test_blocks_of_more_than_2_to_the_32_tokens():
    """Helpers keep 32-bit running sums per block; a block whose total does not fit goes back to lengths."""
    rng = np.random.default_rng(5)
    sizes = rng.integers(2**29, 2**31 - 1, 48).astype(np.int32)
    sizes[::7] = rng.integers(0, 50, sizes[::7].size)
    doc_idx = np.concatenate([rng.permutation(sizes.size) for _ in range(2)]).astype(np.int64)
    for S in (10**9, 3 * 10**9, 123_456_789):
        n = (int(sizes[doc_idx].astype(np.int64).sum()) - 1) // S
        ref = build_sample_idx(sizes, doc_idx, S, n, impl="numpy")
        for config in _cpp_configs():  # blocks of 1-2 documents fit in 32 bits, of 5 or 65,536 do not
            np.testing.assert_array_equal(_cpp(sizes, doc_idx, S, n, *config), ref, err_msg=str(config))


@needs_cpp
def test_buffered_block_of_16_bit_lengths_over_2_to_the_32_tokens():
    """Helpers keep 16-bit lengths per block and 32-bit sums within it: a block whose lengths all fit 16 bits but
    whose total does not fit 32 bits (only with blocks above 65,537 documents) is gathered again in 32 bits."""
    rng = np.random.default_rng(8)
    sizes = np.full(140_000, 0xffff, np.int32)
    sizes[rng.choice(sizes.size, 1000, replace=False)] = rng.integers(0, 0xffff, 1000)
    doc_idx = rng.permutation(sizes.size).astype(np.int32)
    S = 99_999_989
    n = (int(sizes[doc_idx].astype(np.int64).sum()) - 1) // S
    ref = build_sample_idx(sizes, doc_idx, S, n, impl="numpy")
    for narrow in (0, 1):
        for front_blocks in (0, 1):
            out = _cpp(sizes, doc_idx, S, n, 2, 70_000, True, front_blocks, narrow)
            np.testing.assert_array_equal(out, ref, err_msg=f"narrow {narrow} front_blocks {front_blocks}")


@needs_cpp
@pytest.mark.parametrize("S", [4096, 99_999_989, 2**28 + 3])
def test_buffered_16_bit_blocks_near_2_to_the_32_tokens(S):
    """Buffered blocks of 16-bit lengths find 16 rows at a time from 32-bit targets (up to 15 S past the next row):
    the targets of rows inside the block are below its token count, below 2^32, and the lanes past the block's last
    row (whose targets wrap in 32 bits for the larger S) are masked off. Blocks of 65,536 documents of ~65,000 tokens:
    4.26e9 tokens each, just below 2^32."""
    rng = np.random.default_rng(9)
    sizes = rng.integers(64_900, 65_100, 3 * 65_536).astype(np.int32)
    sizes[rng.choice(sizes.size, 500, replace=False)] = 0
    doc_idx = rng.permutation(sizes.size).astype(np.int32)
    n = (int(sizes.sum(dtype=np.int64)) - 1) // S
    ref = build_sample_idx(sizes, doc_idx, S, n, impl="numpy")
    for front_blocks in (0, 1):
        for order in (doc_idx, doc_idx.astype(np.int64)):
            out = _cpp(sizes, order, S, n, 2, 0, True, front_blocks, -1)
            np.testing.assert_array_equal(out, ref, err_msg=f"front_blocks {front_blocks} {order.dtype}")


@needs_cpp
@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.sampled_from([0, 1, 2, 0xfffe, 0xffff, 0x10000, 0x12345, 7_000_000]) | st.integers(0, 70_000),
                      min_size=1, max_size=60),
       epochs=st.integers(1, 2), seq=st.sampled_from([1, 3, 100, 0xffff, 0x10001, 3_000_000]),
       seed=st.integers(0, 2**31), frac=st.floats(0.0, 1.0), idx32=st.booleans())
def test_16_bit_table_escapes_long_documents(sizes, epochs, seq, seed, frac, idx32):
    """Lengths from 0xffff up are escaped in the 16-bit copy and read from sizes (scalar, front walk and AVX-512
    paths); lengths just below stay in the copy."""
    sizes = np.asarray(sizes, np.int32)
    doc_idx = _order(sizes, epochs, 0.5, seed, np.int32 if idx32 else np.int64)
    total = int(sizes[doc_idx].astype(np.int64).sum())
    if total < 1:
        return
    n = int(frac * min((total - 1) // seq, 3000))  # bounded: a million rows per config would only cost time
    ref = build_sample_idx(sizes, doc_idx, seq, n, impl="numpy")
    for config in _cpp_configs():
        np.testing.assert_array_equal(_cpp(sizes, doc_idx, seq, n, *config), ref, err_msg=str(config))


@needs_cpp
def test_16_bit_table_on_a_large_order_automatic_and_forced():
    """The automatic choice makes the 16-bit copy for 2^19+ documents (and keeps it with few escapes); forcing it
    off or on gives the same rows, also when a tenth of the documents escape and at the very last entry; int32 and
    int64 orders."""
    rng = np.random.default_rng(11)
    sizes = rng.integers(1, 3000, 600_000).astype(np.int32)
    doc_idx = np.concatenate([rng.permutation(sizes.size), [sizes.size - 1]]).astype(np.int64)
    for long_docs in (0, sizes.size // 10):
        sizes[rng.choice(sizes.size - 1, long_docs, replace=False)] = rng.integers(0xffff, 200_000, long_docs)
        sizes[-1] = 0xffff
        S = 1024
        n = (int(sizes[doc_idx].astype(np.int64).sum()) - 1) // S
        ref = build_sample_idx(sizes, doc_idx, S, n, impl="numpy")
        for threads in (1, 2):
            for narrow, order in zip((-1, 0, 1), (doc_idx, doc_idx.astype(np.int32), doc_idx)):
                out = _cpp(sizes, order, S, n, threads, 0, True, -1, narrow)
                np.testing.assert_array_equal(out, ref, err_msg=f"threads {threads} narrow {narrow} {order.dtype}")
            out = _cpp(sizes, doc_idx.astype(np.int32), S, n, threads, 0, True, -1, -1)
            np.testing.assert_array_equal(out, ref, err_msg=f"threads {threads} automatic int32")


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


@needs_cpp
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="2 MB mappings are Linux-only (malloc elsewhere)")
@pytest.mark.parametrize("idx_dtype", [np.int32, np.int64])
def test_large_rows_are_2mb_aligned_own_their_memory_and_free_it(tmp_path, idx_dtype):
    """Large rows are mapped in whole 2 MB pages (huge pages: the first touch of numpy's 4 KB head and tail pages
    cost ~20% of a build); the array owns that memory: it outlives the build's other buffers, is writable, saves
    and loads, and is unmapped when the array goes (a leak of ~8 MB per build would show in the RSS)."""
    rng = np.random.default_rng(4)
    sizes = rng.integers(1, 800, 700_000).astype(np.int32)
    order = rng.permutation(sizes.size).astype(idx_dtype)
    S = 256
    n = (int(sizes.sum(dtype=np.int64)) - 1) // S
    ref = build_sample_idx(sizes, order, S, n, impl="numpy")
    rows = build_sample_idx(sizes, order, S, n, impl="cpp", threads=2)
    assert rows.nbytes >= 2 << 20 and rows.ctypes.data % (2 << 20) == 0
    assert rows.flags.c_contiguous and rows.flags.writeable and rows.flags.owndata is False
    np.testing.assert_array_equal(rows, ref)
    np.save(tmp_path / "rows.npy", rows)
    np.testing.assert_array_equal(np.load(tmp_path / "rows.npy", mmap_mode="r"), ref)
    rows[0, 0] = -1  # writable memory of its own: ref is untouched
    assert ref[0, 0] == 0
    del rows
    gc.collect()
    with peak_rss_growth() as grown:  # one build's arrays at a time, unless they leak
        for _ in range(25):
            build_sample_idx(sizes, order, S, n, impl="cpp", threads=2)
    assert grown.bytes < 25 * ref.nbytes // 4, f"rows (or buffers) are not freed: {grown.mib:.0f} MiB"


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
