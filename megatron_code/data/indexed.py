"""Megatron-compatible indexed datasets: ``PREFIX.bin`` (tokens) + ``PREFIX.idx`` (index). See FORMATS.md section 1.

Byte layout of ``.idx`` (little-endian, no padding)::

    magic b"MMIDIDX\\0\\0" | u64 version=1 | u8 dtype code | u64 N | u64 M | i32 sizes[N] | i64 pointers[N]
    | i64 doc_idx[M]                                  (file size == 34 + 12 N + 8 M)

The writer streams tokens to ``PREFIX.bin.tmp-<pid>`` and only after the last byte is on disk writes the index
and renames both into place (``.idx`` last), so an interrupted run never leaves an ``.idx`` that looks valid.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from ..errors import UserError
from ..utils import atomic

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER_SIZE = 34  # 9 magic + 8 version + 1 dtype + 8 N + 8 M

# Codes 6 and 7 are float32/float64 in different (conflicting) orders across forks: never written, rejected on read.
DTYPE_CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 8: np.uint16}
_CODE_OF = {np.dtype(v): k for k, v in DTYPE_CODES.items()}
_WRITABLE = {np.dtype(np.int32), np.dtype(np.uint16)}


class IndexedDatasetError(UserError, ValueError):
    """A ``.bin``/``.idx`` pair is corrupt, truncated, empty or inconsistent."""


class IndexedDatasetNotFound(UserError, FileNotFoundError):
    pass


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 when every id fits with margin (vocab below 65,500, Megatron's threshold), else int32."""
    return np.dtype(np.uint16) if vocab_size is not None and vocab_size < 65500 else np.dtype(np.int32)


def data_file_path(prefix: str) -> str:
    return prefix + ".bin"


def index_file_path(prefix: str) -> str:
    return prefix + ".idx"


def dataset_exists(prefix: str) -> bool:
    return os.path.isfile(data_file_path(prefix)) and os.path.isfile(index_file_path(prefix))


class IndexedDatasetWriter:
    """Streaming writer. One sequence per ``add_item``; ``end_document`` closes a document (documents may hold
    several sequences, as in Megatron's sentence-split mode). ``add_document`` = ``add_item`` + ``end_document``.
    Use as a context manager or call ``finalize()``; ``abort()`` (or an exception in the ``with`` block) deletes
    the temporary files.
    """

    def __init__(self, prefix: str, dtype=np.uint16):
        dtype = np.dtype(dtype)
        if dtype not in _WRITABLE:
            raise IndexedDatasetError(f"refusing to write dtype {dtype}: only uint16 and int32 are written "
                                      f"(use dtype_for_vocab(vocab_size))")
        self.prefix = prefix
        self.dtype = dtype
        d = os.path.dirname(os.path.abspath(prefix))
        os.makedirs(d, exist_ok=True)
        self._bin_tmp = atomic.tmp_path(data_file_path(prefix))
        self._idx_tmp = atomic.tmp_path(index_file_path(prefix))
        self._bin = open(self._bin_tmp, "wb")
        self._sizes: list[np.ndarray] = []
        self._doc_idx = [0]
        self._num_seqs = 0
        self._max = np.iinfo(dtype).max
        self._done = False

    def add_item(self, tokens) -> None:
        arr = np.asarray(tokens)
        self._write_flat(arr, np.array([arr.size], dtype=np.int64))

    def end_document(self) -> None:
        self._doc_idx.append(self._num_seqs)

    def add_document(self, tokens) -> None:
        self.add_item(tokens)
        self.end_document()

    def add_documents(self, flat_tokens, lengths, empty_as_sequence: bool = True) -> None:
        """Append many single-sequence documents at once: ``flat_tokens`` is their concatenation, ``lengths`` the
        per-document token counts (one write call; the fast path for preprocessing). With ``empty_as_sequence``
        False a document of 0 tokens is written as Megatron-LM's IndexedDatasetBuilder writes it: a document
        holding no sequence (its document index repeats the previous one)."""
        lengths = np.asarray(lengths, dtype=np.int64)
        start = self._num_seqs
        if empty_as_sequence:
            self._write_flat(np.asarray(flat_tokens), lengths)
            self._doc_idx.extend(range(start + 1, self._num_seqs + 1))
            return
        nonempty = lengths > 0
        self._write_flat(np.asarray(flat_tokens), lengths[nonempty])
        self._doc_idx.extend((start + np.cumsum(nonempty)).tolist())

    def _write_flat(self, arr: np.ndarray, lengths: np.ndarray) -> None:
        if arr.ndim != 1:
            arr = arr.reshape(-1)
        if arr.size != int(lengths.sum()):
            raise IndexedDatasetError(f"token count {arr.size} != sum of lengths {int(lengths.sum())}")
        if arr.size and arr.dtype != self.dtype:
            if np.issubdtype(arr.dtype, np.floating):
                raise IndexedDatasetError("token ids must be integers, got floats")
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi > self._max:
                raise IndexedDatasetError(f"token id {hi if hi > self._max else lo} does not fit {self.dtype}; "
                                          f"pick the dtype with dtype_for_vocab(vocab_size)")
            arr = arr.astype(self.dtype)
        if (lengths > np.iinfo(np.int32).max).any():
            raise IndexedDatasetError("a sequence longer than 2^31-1 tokens cannot be indexed")
        self._bin.write(arr.astype(self.dtype.newbyteorder("<"), copy=False).tobytes())
        self._sizes.append(lengths.astype(np.int32))
        self._num_seqs += lengths.size

    def finalize(self) -> None:
        """Flush ``.bin``, write ``.idx`` and rename both into place (``.idx`` last)."""
        if self._done:
            return
        if self._doc_idx[-1] != self._num_seqs:  # an open document: close it rather than lose sequences
            self.end_document()
        self._bin.flush()
        os.fsync(self._bin.fileno())
        self._bin.close()
        sizes = np.concatenate(self._sizes) if self._sizes else np.zeros(0, np.int32)
        write_index(self._idx_tmp, self.dtype, sizes, np.asarray(self._doc_idx, dtype=np.int64))
        idx_final = index_file_path(self.prefix)
        if os.path.exists(idx_final):  # never let an old index sit next to the new .bin
            os.remove(idx_final)
        atomic.replace(self._bin_tmp, data_file_path(self.prefix))
        atomic.replace(self._idx_tmp, idx_final)
        self._done = True

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        if not self._bin.closed:
            self._bin.close()
        for p in (self._bin_tmp, self._idx_tmp):
            if os.path.exists(p):
                os.remove(p)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.finalize()
        else:
            self.abort()
        return False


def write_index(path: str, dtype, sizes: np.ndarray, doc_idx: np.ndarray) -> None:
    """Write an ``.idx`` file for ``sizes`` (int32[N]) and ``doc_idx`` (int64[M]); pointers are derived."""
    dtype = np.dtype(dtype)
    sizes = np.asarray(sizes, dtype=np.int32)
    pointers = np.zeros(sizes.size, dtype=np.int64)
    if sizes.size > 1:
        np.cumsum(sizes[:-1].astype(np.int64) * dtype.itemsize, out=pointers[1:])
    with open(path, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<Q", VERSION))
        f.write(struct.pack("<B", _CODE_OF[dtype]))
        f.write(struct.pack("<Q", sizes.size))
        f.write(struct.pack("<Q", len(doc_idx)))
        f.write(sizes.astype("<i4").tobytes())
        f.write(pointers.astype("<i8").tobytes())
        f.write(np.asarray(doc_idx).astype("<i8").tobytes())
        f.flush()
        os.fsync(f.fileno())


def _corrupt(path: str, why: str) -> IndexedDatasetError:
    return IndexedDatasetError(f"corrupt or truncated index {path}: {why} (re-run tools/preprocess_data.py)")


class IndexedDataset:
    """Memory-mapped reader of ``PREFIX.bin``/``PREFIX.idx``; validates the pair on open.

    ``sizes`` (int32[N]) are sequence lengths, ``pointers`` (int64[N]) byte offsets, ``doc_idx`` (int64[M])
    document bounds over sequences. ``ds[i]`` is sequence ``i`` as a read-only view in the file's dtype.
    """

    def __init__(self, prefix: str):
        self.prefix = prefix
        idx_path, bin_path = index_file_path(prefix), data_file_path(prefix)
        for p in (idx_path, bin_path):
            if not os.path.isfile(p):
                hint = "check --data-path"
                if prefix.endswith((".bin", ".idx")) and dataset_exists(prefix[:-4]):
                    hint = f"drop the suffix: pass {prefix[:-4]}"
                elif dataset_exists(prefix + "_text_document"):
                    hint = f"preprocess_data.py appends _text_document: pass {prefix}_text_document"
                raise IndexedDatasetNotFound(f"dataset file not found: {p} (a dataset is a path prefix with "
                                             f".bin and .idx files; {hint})")
        self.sizes, self.pointers, self.doc_idx, self.dtype = _read_index(idx_path)
        n = self.sizes.size
        if n == 0:
            raise IndexedDatasetError(f"empty dataset {prefix}: the index holds no sequences (was the input "
                                      f"empty, or were all lines skipped?)")
        expected = int(self.sizes.sum(dtype=np.int64)) * self.dtype.itemsize
        actual = os.path.getsize(bin_path)
        if actual != expected:
            raise _corrupt(idx_path, f"{bin_path} has {actual} bytes but the index describes {expected}")
        self._bin = np.memmap(bin_path, dtype=self.dtype, mode="r") if expected else np.zeros(0, self.dtype)

    def __len__(self) -> int:
        return int(self.sizes.size)

    def __getitem__(self, i) -> np.ndarray:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.get(int(i))

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens ``[offset, offset+length)`` of sequence ``i`` (view into the mmap, file dtype)."""
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"sequence {i} out of range for {len(self)} sequences")
        size = int(self.sizes[i])
        if length is None:
            length = size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise IndexError(f"tokens [{offset}, {offset + length}) out of range for sequence {i} of size {size}")
        start = int(self.pointers[i]) // self.dtype.itemsize + offset
        return self._bin[start:start + length]

    def content_key(self) -> str:
        """``"<idx bytes>:<sha256 of the .idx>"``: identifies the index's content (sequence lengths and document
        bounds, everything a sample index is built from), so caches keyed by it are rebuilt when the dataset is
        rewritten, even with the same path, counts and totals. Hashing reads the .idx once (12 bytes per sequence;
        SHA-256 runs at ~1.7 GB/s here); the result is kept for this reader."""
        if getattr(self, "_content_key", None) is None:
            import hashlib

            path = index_file_path(self.prefix)
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            self._content_key = f"{os.path.getsize(path)}:{digest}"
        return self._content_key

    @property
    def num_documents(self) -> int:
        return int(self.doc_idx.size - 1)

    @property
    def num_tokens(self) -> int:
        return int(self.sizes.sum(dtype=np.int64))

    def token_id_range(self) -> tuple[int, int]:
        """(smallest, largest) token id in the ``.bin``, scanning it in 16M-token chunks."""
        lo, hi = None, None
        step = 1 << 24
        for s in range(0, self._bin.size, step):
            chunk = self._bin[s:s + step]
            a, b = int(chunk.min()), int(chunk.max())
            lo = a if lo is None else min(lo, a)
            hi = b if hi is None else max(hi, b)
        return (0, -1) if lo is None else (lo, hi)

    def max_token_id(self) -> int:
        """Largest token id in the ``.bin`` (-1 if it holds no tokens)."""
        return self.token_id_range()[1]

    def check_vocab(self, vocab_size: int) -> None:
        """Raise if a token id is outside ``[0, vocab_size)``; call before training starts."""
        lo, hi = self.token_id_range()
        if hi >= vocab_size or lo < 0:
            bad = hi if hi >= vocab_size else lo
            raise IndexedDatasetError(f"token id {bad} in {self.prefix} is outside the vocabulary (size "
                                      f"{vocab_size}); the data was tokenized with another tokenizer - "
                                      f"re-run preprocessing or pass the matching tokenizer")

    def __getstate__(self):
        # Re-open by path in DataLoader workers instead of pickling the memory maps' contents.
        return {"prefix": self.prefix}

    def __setstate__(self, state):
        self.__init__(state["prefix"])


def _read_index(path: str):
    size = os.path.getsize(path)
    if size < HEADER_SIZE:
        raise _corrupt(path, f"{size} bytes is shorter than the {HEADER_SIZE}-byte header")
    with open(path, "rb") as f:
        header = f.read(HEADER_SIZE)
    if header[:9] != MAGIC:
        raise _corrupt(path, f"bad magic {header[:9]!r} (expected {MAGIC!r}); not a Megatron .idx file")
    (version,) = struct.unpack("<Q", header[9:17])
    if version != VERSION:
        raise _corrupt(path, f"unsupported version {version} (expected {VERSION})")
    code = header[17]
    if code in (6, 7):
        raise _corrupt(path, f"dtype code {code} is a float type, which token files never use")
    if code not in DTYPE_CODES:
        raise _corrupt(path, f"unknown dtype code {code}")
    dtype = np.dtype(DTYPE_CODES[code])
    n, m = struct.unpack("<QQ", header[18:34])
    expected = HEADER_SIZE + 12 * n + 8 * m
    if size != expected:
        raise _corrupt(path, f"file is {size} bytes but N={n}, M={m} need {expected}")
    if m < 1:
        raise _corrupt(path, "document index is empty (M=0)")
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    sizes = np.frombuffer(mm, dtype="<i4", count=n, offset=HEADER_SIZE)
    pointers = np.frombuffer(mm, dtype="<i8", count=n, offset=HEADER_SIZE + 4 * n)
    doc_idx = np.frombuffer(mm, dtype="<i8", count=m, offset=HEADER_SIZE + 12 * n)
    if n and (sizes < 0).any():
        raise _corrupt(path, "negative sequence length")
    if doc_idx[0] != 0 or doc_idx[-1] != n or (np.diff(doc_idx) < 0).any():
        raise _corrupt(path, f"document bounds must rise from 0 to N={n}, got {doc_idx[0]}..{doc_idx[-1]}")
    if n:
        if pointers[0] != 0 or (np.diff(pointers) != sizes[:-1].astype(np.int64) * dtype.itemsize).any():
            raise _corrupt(path, "pointers are inconsistent with the sequence lengths")
    return sizes, pointers, doc_idx, dtype


def merge_datasets(prefixes: list[str], output_prefix: str) -> None:
    """Concatenate datasets: ``.bin`` files back to back, document bounds shifted. dtypes must match."""
    if not prefixes:
        raise IndexedDatasetError("nothing to merge: no input datasets")
    datasets = [IndexedDataset(p) for p in prefixes]
    dtypes = {d.dtype for d in datasets}
    if len(dtypes) != 1:
        raise IndexedDatasetError(f"cannot merge datasets of different dtypes {sorted(map(str, dtypes))}; "
                                  f"re-tokenize them with the same tokenizer")
    dtype = dtypes.pop()
    from .identity import merged_record, sidecar_path, write_sidecar

    record = merged_record(prefixes)  # refuses inputs made by different tokenizers
    bin_tmp, idx_tmp = atomic.tmp_path(data_file_path(output_prefix)), atomic.tmp_path(index_file_path(output_prefix))
    os.makedirs(os.path.dirname(os.path.abspath(output_prefix)), exist_ok=True)
    if record is not None:  # first: a dataset whose sidecar names another tokenizer is refused, never missed
        write_sidecar(output_prefix, record=record)
    elif os.path.exists(sidecar_path(output_prefix)):
        os.remove(sidecar_path(output_prefix))  # an overwritten output's old record no longer applies
    try:
        with open(bin_tmp, "wb") as out:
            for p in prefixes:
                with open(data_file_path(p), "rb") as f:
                    while chunk := f.read(1 << 24):
                        out.write(chunk)
        sizes = np.concatenate([d.sizes for d in datasets])
        doc_parts, shift = [np.zeros(1, np.int64)], 0
        for d in datasets:
            doc_parts.append(np.asarray(d.doc_idx[1:], dtype=np.int64) + shift)
            shift += len(d)
        write_index(idx_tmp, dtype, sizes, np.concatenate(doc_parts))
        if os.path.exists(index_file_path(output_prefix)):
            os.remove(index_file_path(output_prefix))
        atomic.replace(bin_tmp, data_file_path(output_prefix))
        atomic.replace(idx_tmp, index_file_path(output_prefix))
    finally:
        for p in (bin_tmp, idx_tmp):
            if os.path.exists(p):
                os.remove(p)
