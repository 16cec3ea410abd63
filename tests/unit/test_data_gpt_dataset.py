"""GPTDataset / blends / builder: packing, splits, order stable under extension, caches, errors."""

import os

import numpy as np
import pytest

from megatron_code.data.blended import BlendedDataset, BlendError, parse_data_path
from megatron_code.data.gpt_dataset import (DatasetConfigError, GPTDataset, build_gpt_datasets, _rng, check_vocab,
                                            split_ranges)
from megatron_code.data.helpers import IndexCache, IndexCacheMissing
from megatron_code.data.indexed import IndexedDataset, IndexedDatasetError, IndexedDatasetWriter


def make_dataset(path, n_docs=60, seed=0, max_len=30, base=0):
    """Documents whose tokens encode (doc id, position) so any sample can be checked against the stream."""
    rng = np.random.default_rng(seed)
    docs = []
    with IndexedDatasetWriter(str(path), np.int32) as w:
        for d in range(n_docs):
            n = int(rng.integers(1, max_len))
            doc = base + d * 1000 + np.arange(n)
            docs.append(doc)
            w.add_document(doc)
    return IndexedDataset(str(path)), docs


@pytest.fixture
def ds(tmp_path):
    return make_dataset(tmp_path / "d")


def stream_of(gds, docs):
    return np.concatenate([docs[int(d)] for d in gds.doc_idx])


def test_samples_are_packed_windows_of_the_shuffled_stream(ds):
    indexed, docs = ds
    g = GPTDataset(indexed, (0, 60), seq_length=16, seed=5, num_samples=200)
    stream = stream_of(g, docs)
    seen = set()
    for i in range(len(g)):
        j = int(g.shuffle_idx[i])
        tokens = g[i]["tokens"]
        assert tokens.dtype == np.int64 and tokens.shape == (17,)
        np.testing.assert_array_equal(tokens, stream[j * 16:j * 16 + 17])
        seen.add(j)
    assert seen == set(range(len(g)))  # a permutation
    assert len(g) >= 200


def test_split_ranges_and_epochs(ds):
    indexed, docs = ds
    assert split_ranges("969,30,1", 1000) == [(0, 969), (969, 999), (999, 1000)]
    assert split_ranges("98,2", 10) == [(0, 10), (10, 10), (10, 10)]
    tr = GPTDataset(indexed, (0, 50), 8, 1, num_samples=10)
    # one epoch is enough -> only epoch-0 documents of the train range appear in the first block
    assert set(tr.doc_idx[: 50].tolist()) == set(range(50))
    # int32 like Megatron's document index, and the same order int64 ids would give (caches stay valid)
    assert tr.doc_idx.dtype == np.int32
    np.testing.assert_array_equal(tr.doc_idx[:50], _rng(1, 0, 0).permutation(np.arange(50, dtype=np.int64)))
    T = int(indexed.sizes[:50].sum())
    big = GPTDataset(indexed, (0, 50), 8, 1, num_samples=3 * T // 8)
    assert big.num_epochs == 3
    # each epoch of the document order is its own permutation of the split
    for e in range(3):
        assert sorted(big.doc_idx[e * 50:(e + 1) * 50].tolist()) == list(range(50))
    epochs = [big.epoch_of(i) for i in range(len(big))]
    assert epochs == sorted(epochs) and epochs[0] == 0 and epochs[-1] == 2
    # samples of epoch block e start inside epoch e of the stream
    for i in (0, len(big) // 2, len(big) - 1):
        j = int(big.shuffle_idx[i])
        assert (j * 8) // T == big.epoch_of(i)


def test_extension_keeps_earlier_samples(ds):
    """A run extended from 100 to 200 iterations sees the same samples in the first 100 (our deviation)."""
    indexed, _ = ds
    gbs = 4
    short = GPTDataset(indexed, (0, 60), 16, 7, num_samples=100 * gbs)
    long = GPTDataset(indexed, (0, 60), 16, 7, num_samples=200 * gbs)
    assert long.num_epochs > short.num_epochs
    for i in range(100 * gbs):
        np.testing.assert_array_equal(short[i]["tokens"], long[i]["tokens"])
        assert short.epoch_of(i) == long.epoch_of(i)
    other_seed = GPTDataset(indexed, (0, 60), 16, 8, num_samples=100 * gbs)
    assert any((other_seed[i]["tokens"] != short[i]["tokens"]).any() for i in range(10))


def test_one_pass_mode(ds):
    indexed, docs = ds
    v = GPTDataset(indexed, (50, 60), 8, 1, num_samples=None)
    T = int(indexed.sizes[50:60].sum())
    assert len(v) == (T - 1) // 8 and v.num_epochs == 1


def test_build_gpt_datasets_single_and_cache(tmp_path, ds):
    indexed, _ = ds
    calls = []
    kw = dict(data_path=[str(tmp_path / "d")], split="80,10,10", seq_length=8, seed=3, num_samples=(50, 5, 0),
              cache_dir=str(tmp_path / "cache"))
    tr, va, te = build_gpt_datasets(**kw, barrier=lambda: calls.append("b"))
    assert calls == ["b"] and te is None and isinstance(tr, GPTDataset) and len(va) >= 5
    files = os.listdir(tmp_path / "cache")
    assert any(f.endswith("shuffle_idx.npy") for f in files) and not any(".tmp-" in f for f in files)
    tr2, va2, _ = build_gpt_datasets(**kw, is_builder=False)  # loads (mmap) what the builder wrote
    assert isinstance(tr2.shuffle_idx, np.memmap)
    for i in range(50):
        np.testing.assert_array_equal(tr[i]["tokens"], tr2[i]["tokens"])
    with pytest.raises(IndexCacheMissing, match="build_index.py"):
        build_gpt_datasets(**{**kw, "cache_dir": str(tmp_path / "other")}, is_builder=False)


def test_blend_through_builder(tmp_path):
    make_dataset(tmp_path / "a", seed=1, base=0)
    make_dataset(tmp_path / "b", seed=2, base=10**6)
    tr, va, te = build_gpt_datasets(data_path=["0.3", str(tmp_path / "a"), "0.7", str(tmp_path / "b")],
                                    split="90,10,0", seq_length=8, seed=3, num_samples=(300, None, 0),
                                    cache_dir=None)
    assert isinstance(tr, BlendedDataset) and len(tr) == 300
    frac_b = (np.asarray(tr.dataset_index) == 1).mean()
    assert abs(frac_b - 0.7) <= 1 / 300
    for i in range(0, 300, 37):  # items come from the right dataset (b's token ids are >= 10**6)
        assert (tr[i]["tokens"] >= 10**6).all() == (tr.dataset_index[i] == 1)
        assert tr.epoch_of(i) >= 0
    # each component is asked for ceil(300 * w * 1.005) samples
    assert len(tr.datasets[0]) >= int(np.ceil(300 * 0.3 * 1.005))
    assert va is not None and len(va) > 0 and te is None
    # extension of a blend keeps its prefix
    tr_long = build_gpt_datasets(data_path=["0.3", str(tmp_path / "a"), "0.7", str(tmp_path / "b")],
                                 split="90,10,0", seq_length=8, seed=3, num_samples=(900, 0, 0))[0]
    for i in range(300):
        np.testing.assert_array_equal(tr[i]["tokens"], tr_long[i]["tokens"])


def test_blend_component_with_empty_split_is_dropped(tmp_path):
    make_dataset(tmp_path / "a", seed=1, n_docs=60)
    make_dataset(tmp_path / "b", seed=2, n_docs=5)  # 2% of 5 documents rounds to an empty valid range
    with pytest.warns(UserWarning, match="valid split is empty"):
        tr, va, te = build_gpt_datasets(data_path=["0.5", str(tmp_path / "a"), "0.5", str(tmp_path / "b")],
                                        split="98,2,0", seq_length=8, seed=1, num_samples=(100, 10, 0))
    assert isinstance(tr, BlendedDataset) and isinstance(va, GPTDataset) and te is None


def test_separate_split_paths_and_size_weights(tmp_path):
    a, _ = make_dataset(tmp_path / "a", seed=1, n_docs=20)
    b, _ = make_dataset(tmp_path / "b", seed=2, n_docs=60)
    tr, va, te = build_gpt_datasets(train_data_path=[str(tmp_path / "a"), str(tmp_path / "b")],
                                    valid_data_path=[str(tmp_path / "a")], seq_length=8, seed=1,
                                    num_samples=(200, 10, 10))
    wa = a.num_tokens / (a.num_tokens + b.num_tokens)
    assert tr.weights == pytest.approx([wa, 1 - wa])
    assert isinstance(va, GPTDataset) and te is None


def test_data_path_parsing_errors():
    assert parse_data_path(["0.3", "A", "0.7", "B"]) == ([0.3, 0.7], ["A", "B"])
    assert parse_data_path(["0.3 A 0.7 B"]) == ([0.3, 0.7], ["A", "B"])
    assert parse_data_path(["A", "B"]) == (None, ["A", "B"])
    for bad in (["0.3", "A", "B"], ["0.3", "A", "0.7"], ["A", "0.5"], ["0.3", "0.7"]):
        with pytest.raises(BlendError, match="weights do not match paths"):
            parse_data_path(bad)
    with pytest.raises(BlendError, match="not all zero"):
        parse_data_path(["0", "A"])


def test_blend_asking_for_too_many_samples(tmp_path, ds):
    indexed, _ = ds
    small = GPTDataset(indexed, (0, 10), 8, 1, num_samples=None)
    big = GPTDataset(indexed, (10, 60), 8, 1, num_samples=1000)
    with pytest.raises(BlendError, match="more samples than it can give"):
        BlendedDataset([small, big], [0.5, 0.5], size=4 * len(small), names=["small", "big"])
    capped = BlendedDataset([small, big], [0.5, 0.5], size=None)  # one pass: truncated where one runs out
    assert len(capped) <= 2 * len(small) + 1
    with pytest.raises(BlendError, match="weights do not match"):
        BlendedDataset([small, big], [1.0], size=10)


def test_builder_errors(tmp_path, ds):
    with pytest.raises(DatasetConfigError, match="either --data-path"):
        build_gpt_datasets(data_path=["x"], train_data_path=["y"], seq_length=8, seed=1, num_samples=(1, 1, 1))
    with pytest.raises(DatasetConfigError, match="no data"):
        build_gpt_datasets(seq_length=8, seed=1, num_samples=(1, 1, 1))
    with pytest.raises(FileNotFoundError, match="check --data-path"):
        build_gpt_datasets(data_path=[str(tmp_path / "missing")], seq_length=8, seed=1, num_samples=(1, 1, 1))
    with pytest.raises(DatasetConfigError, match="--split"):
        build_gpt_datasets(data_path=[str(tmp_path / "d")], split="a,b", seq_length=8, seed=1,
                           num_samples=(1, 1, 1))


def test_vocab_check_before_training(tmp_path, ds):
    tr, va, te = build_gpt_datasets(data_path=[str(tmp_path / "d")], split="90,10,0", seq_length=8, seed=1,
                                    num_samples=(10, 2, 0))
    check_vocab((tr, va, te), 60_000)
    with pytest.raises(IndexedDatasetError, match="outside the vocabulary"):
        check_vocab((tr, va, te), 1000)


def test_cache_is_written_atomically(tmp_path, ds):
    indexed, _ = ds
    cache = IndexCache(str(tmp_path / "c"))
    GPTDataset(indexed, (0, 60), 8, 1, 50, cache=cache)
    names = sorted(os.listdir(tmp_path / "c"))
    assert len(names) == 4 and names[0].endswith("description.json")
    # a cache whose description file is missing is rebuilt, not half-read
    os.remove(tmp_path / "c" / names[0])
    g = GPTDataset(indexed, (0, 60), 8, 1, 50, cache=cache)
    assert len(g) >= 50
