"""Megatron .bin/.idx: exact bytes of the FORMATS.md example, validation errors, atomic writes, merging."""

import os
import struct

import numpy as np
import pytest

from megatron_code.data.indexed import (IndexedDataset, IndexedDatasetError, IndexedDatasetNotFound,
                                        IndexedDatasetWriter, dtype_for_vocab, merge_datasets)


def write(prefix, docs, dtype=np.uint16):
    with IndexedDatasetWriter(str(prefix), dtype) as w:
        for d in docs:
            w.add_document(d)
    return str(prefix)


def expected_idx(code, sizes, doc_idx, itemsize):
    pointers = np.concatenate([[0], np.cumsum(sizes[:-1]) * itemsize]).astype("<i8")
    return (b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, code, len(sizes), len(doc_idx))
            + np.asarray(sizes, "<i4").tobytes() + pointers.tobytes() + np.asarray(doc_idx, "<i8").tobytes())


def test_formats_worked_example_exact_bytes(tmp_path):
    p = write(tmp_path / "ex", [[10, 11, 12, 0], [20, 21, 0]])
    bin_bytes = open(p + ".bin", "rb").read()
    idx_bytes = open(p + ".idx", "rb").read()
    assert bin_bytes == bytes.fromhex("0a000b000c000000140015000000")
    assert len(bin_bytes) == 14 and len(idx_bytes) == 82
    assert idx_bytes == expected_idx(8, [4, 3], [0, 1, 2], 2)
    assert idx_bytes[:9] == bytes.fromhex("4d4d4944494458 0000".replace(" ", ""))
    ds = IndexedDataset(p)
    assert len(ds) == 2 and ds.dtype == np.uint16
    assert ds[0].tolist() == [10, 11, 12, 0] and ds[1].tolist() == [20, 21, 0]
    assert ds.sizes.tolist() == [4, 3] and ds.pointers.tolist() == [0, 8] and ds.doc_idx.tolist() == [0, 1, 2]
    assert ds.get(0, offset=1, length=2).tolist() == [11, 12]
    assert ds.max_token_id() == 21


def test_int32_for_large_vocab_and_multi_sequence_documents(tmp_path):
    assert dtype_for_vocab(65499) == np.uint16 and dtype_for_vocab(65500) == np.int32
    with IndexedDatasetWriter(str(tmp_path / "big"), dtype_for_vocab(100_000)) as w:
        w.add_item([70000, 1])
        w.add_item([5])
        w.end_document()
        w.add_documents(np.array([1, 2, 3, 99999]), [1, 3])
    raw = open(tmp_path / "big.idx", "rb").read()
    assert raw[17] == 4  # int32 code
    assert raw == expected_idx(4, [2, 1, 1, 3], [0, 2, 3, 4], 4)
    ds = IndexedDataset(str(tmp_path / "big"))
    assert ds.doc_idx.tolist() == [0, 2, 3, 4] and ds[0].tolist() == [70000, 1] and ds[3].tolist() == [2, 3, 99999]


def test_writer_rejects_ids_that_do_not_fit(tmp_path):
    with pytest.raises(IndexedDatasetError, match="does not fit"):
        with IndexedDatasetWriter(str(tmp_path / "x"), np.uint16) as w:
            w.add_document([70000])
    assert not os.listdir(tmp_path)  # aborted: temporary files removed, nothing left
    with pytest.raises(IndexedDatasetError, match="only uint16 and int32"):
        IndexedDatasetWriter(str(tmp_path / "y"), np.float32)


def test_interrupted_write_leaves_no_valid_looking_index(tmp_path):
    old = write(tmp_path / "d", [[1, 2, 3]])
    w = IndexedDatasetWriter(old, np.uint16)
    w.add_document([4, 5])
    # simulated crash: the process dies before finalize(); only temp files exist besides the old pair
    names = sorted(os.listdir(tmp_path))
    assert {"d.bin", "d.idx"} <= set(names) and all(".tmp-" in n for n in set(names) - {"d.bin", "d.idx"})
    assert IndexedDataset(old)[0].tolist() == [1, 2, 3]
    w.finalize()
    assert IndexedDataset(old)[0].tolist() == [4, 5]
    assert sorted(os.listdir(tmp_path)) == ["d.bin", "d.idx"]


def corrupt(tmp_path, mutate):
    p = write(tmp_path / "c", [[10, 11, 12, 0], [20, 21, 0]])
    idx = bytearray(open(p + ".idx", "rb").read())
    binb = bytearray(open(p + ".bin", "rb").read())
    idx, binb = mutate(idx, binb)
    open(p + ".idx", "wb").write(bytes(idx))
    open(p + ".bin", "wb").write(bytes(binb))
    return p


@pytest.mark.parametrize("name,mutate,match", [
    ("truncated bin", lambda i, b: (i, b[:-2]), "has 12 bytes but the index describes 14"),
    ("bin too long", lambda i, b: (i, b + b"\0\0"), "has 16 bytes"),
    ("wrong magic", lambda i, b: (b"XXIDIDX\0\0" + i[9:], b), "bad magic"),
    ("bad version", lambda i, b: (i[:9] + struct.pack("<Q", 2) + i[17:], b), "unsupported version 2"),
    ("float32 code 6", lambda i, b: (i[:17] + bytes([6]) + i[18:], b), "float"),
    ("float64 code 7", lambda i, b: (i[:17] + bytes([7]) + i[18:], b), "float"),
    ("unknown code", lambda i, b: (i[:17] + bytes([9]) + i[18:], b), "unknown dtype code 9"),
    ("truncated idx", lambda i, b: (i[:-8], b), "file is 74 bytes"),
    ("short header", lambda i, b: (i[:20], b), "shorter than"),
    ("bad pointers", lambda i, b: (i[:42] + struct.pack("<q", 6) + i[50:], b), "pointers are inconsistent"),
    ("bad doc bounds", lambda i, b: (i[:-8] + struct.pack("<q", 5), b), "document bounds"),
    ("dtype says int32", lambda i, b: (i[:17] + bytes([4]) + i[18:], b), "pointers are inconsistent"),
])
def test_corrupt_files_give_clear_errors(tmp_path, name, mutate, match):
    p = corrupt(tmp_path, mutate)
    with pytest.raises(IndexedDatasetError) as info:
        IndexedDataset(p)
    msg = str(info.value)
    assert match in msg
    if "empty" not in msg:
        assert msg.startswith("corrupt or truncated index") and "c.idx" in msg


def test_empty_and_missing(tmp_path):
    with IndexedDatasetWriter(str(tmp_path / "e"), np.uint16):
        pass
    with pytest.raises(IndexedDatasetError, match="empty dataset"):
        IndexedDataset(str(tmp_path / "e"))
    with pytest.raises(IndexedDatasetNotFound, match="check --data-path"):
        IndexedDataset(str(tmp_path / "nope"))


def test_check_vocab(tmp_path):
    ds = IndexedDataset(write(tmp_path / "v", [[1, 2, 300]]))
    ds.check_vocab(301)
    with pytest.raises(IndexedDatasetError, match="token id 300 .* outside the vocabulary"):
        ds.check_vocab(300)


def test_merge(tmp_path):
    a = write(tmp_path / "a", [[1, 2], [3]])
    b = write(tmp_path / "b", [[4, 5, 6]])
    merge_datasets([a, b], str(tmp_path / "m"))
    m = IndexedDataset(str(tmp_path / "m"))
    assert [x.tolist() for x in m[0:3]] == [[1, 2], [3], [4, 5, 6]]
    assert m.doc_idx.tolist() == [0, 1, 2, 3] and m.pointers.tolist() == [0, 4, 6]
    c = write(tmp_path / "c", [[1]], dtype=np.int32)
    with pytest.raises(IndexedDatasetError, match="different dtypes"):
        merge_datasets([a, c], str(tmp_path / "m2"))


def test_pickle_reopens_by_path(tmp_path):
    import pickle

    ds = IndexedDataset(write(tmp_path / "p", [[1, 2, 3], [4]]))
    blob = pickle.dumps(ds)
    assert len(blob) < 500  # the path, not the data
    again = pickle.loads(blob)
    assert again[1].tolist() == [4] and again.token_id_range() == (1, 4)
