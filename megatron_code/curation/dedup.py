"""Exact and near deduplication on datatrove's dedup stages, adapted to code.

Exact: datatrove's ``ExactDedupSignature`` / ``ExactFindDedups`` / ``ExactDedupFilter`` on the SHA-256 (its first
64 bits: the width datatrove's signature files hold) of the *normalized* text: line endings unified, trailing
whitespace stripped; for notebooks the cells' sources (so the same notebook rendered differently, or with other
outputs, is still a copy: JuPyT5's dedup on normalized cells).

Near: MinHash over shingles of ``n_grams`` consecutive *code tokens* (identifiers, numbers, single punctuation
characters; whitespace and layout ignored), LSH with ``bands x rows`` chosen from the Jaccard threshold
(:func:`lsh_params`), on datatrove's ``MinhashDedupSignature`` (signatures are written to disk per bucket and
sorted there: memory stays bounded whatever the corpus size) and ``MinhashDedupBuckets`` (a k-way merge of the
sorted signature files) and ``MinhashDedupFilter``. Two pieces are ours:

* the shingles (:class:`CodeMinhashSignature`): datatrove's lower-cases the text, strips punctuation and splits
  words with a natural-language tokenizer (spaCy for English), which erases most of what distinguishes code;
* the clustering (:class:`OrderedMinhashCluster`): datatrove's trusts every LSH candidate pair and roots each
  cluster at its largest subtree; ours first verifies each candidate on the full signature (estimated Jaccard
  >= threshold), then keeps the document that comes first in the corpus (lowest task, then lowest index).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import xxhash
from datatrove.data import Document, DocumentsPipeline
from datatrove.io import DataFolderLike, get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig, ExactDedupSignature, get_sig_dtype
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
from datatrove.utils.binaryio import read_tuples_from_file
from datatrove.utils.hashing import HashConfig
from datatrove.utils.typeshelper import ExtensionHelperSD, StatHints
from datatrove.utils.word_tokenizers import WordTokenizer

# Word characters: [0-9A-Za-z_] and every non-ASCII code point; whitespace: the six ASCII ones. Defined on bytes
# this way so csrc/minhash.cpp tokenizes UTF-8 without Unicode tables and gets the same tokens.
_TOKEN = re.compile(r"[0-9A-Za-z_\u0080-\U0010ffff]+|[^0-9A-Za-z_\u0080-\U0010ffff \t\n\v\f\r]")

# Jaccard threshold presets: the study's 0.9; StarCoder's documented 0.7 (Li et al. 2023, section 3.3: 5-grams,
# Jaccard 0.7) and 0.85 (the dedup setting of the BigCode near-dedup tooling).
PRESETS = {"study": 0.9, "starcoder-0.85": 0.85, "starcoder": 0.7}


def code_tokens(text: str) -> list[str]:
    """Identifiers/numbers (any run of word characters, non-ASCII included) and single ASCII punctuation
    characters; whitespace (indentation, line breaks) dropped."""
    return _TOKEN.findall(text)


class CodeWordTokenizer(WordTokenizer):
    """datatrove's tokenizer interface over :func:`code_tokens` (word_tokenize is what the MinHash stages use)."""

    def __init__(self):
        super().__init__("code")

    def word_tokenize(self, text: str) -> list[str]:
        return code_tokens(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return text.splitlines()

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [(m.start(), m.end()) for m in _TOKEN.finditer(text)]


def shingle_strings(text: str, n: int) -> list[str]:
    """The distinct n-token shingles of ``text`` (a document shorter than n tokens is one shingle)."""
    toks = code_tokens(text)
    if not toks:
        return []
    if len(toks) < n:
        return [" ".join(toks)]
    return list({" ".join(toks[i:i + n]) for i in range(len(toks) - n + 1)})


def lsh_params(threshold: float, num_perm: int, fp_weight: float = 0.1, fn_weight: float = 0.9) -> tuple[int, int]:
    """(bands, rows) with bands*rows <= num_perm minimising the weighted areas of false positives (Jaccard below
    ``threshold`` becoming candidates) and false negatives (above it, missed) under the LSH S-curve
    P(s) = 1 - (1 - s^rows)^bands (Leskovec, Rajaraman & Ullman, Mining of Massive Datasets, ch. 3.4)."""
    if not 0 < threshold < 1:
        raise ValueError(f"near-dedup threshold {threshold} must be in (0, 1)")
    grid_lo = np.linspace(0.0, threshold, 400)
    grid_hi = np.linspace(threshold, 1.0, 400)
    best, best_err = None, float("inf")
    for r in range(1, num_perm + 1):  # every band count for this row count at once (the loop was 0.8 s per run)
        bands = np.arange(1, num_perm // r + 1, dtype=np.float64)[:, None]
        fp = np.trapezoid(1 - (1 - grid_lo ** r) ** bands, grid_lo, axis=1)
        fn = np.trapezoid((1 - grid_hi ** r) ** bands, grid_hi, axis=1)
        err = fp_weight * fp + fn_weight * fn
        for i, e in enumerate(err):  # the same tie-breaking as the scalar loop: lowest bands, then lowest rows
            b = i + 1
            if e < best_err - 1e-12 or (abs(e - best_err) <= 1e-12 and best is not None and b < best[0]):
                best, best_err = (b, r), float(e)
    return best


@dataclass
class NearDedupParams:
    threshold: float = 0.9
    num_perm: int = 256
    n_grams: int = 5
    seed: int = 1
    bands: int | None = None
    rows: int | None = None

    def config(self) -> MinhashConfig:
        b, r = (self.bands, self.rows) if self.bands and self.rows else lsh_params(self.threshold, self.num_perm)
        return MinhashConfig(n_grams=self.n_grams, num_buckets=b, hashes_per_bucket=r, seed=self.seed,
                             hash_config=HashConfig(precision=64, hash_fc="xxhash"))


# --- bounded-memory sorting ----------------------------------------------------------------------------------

DEFAULT_SORT_BUFFER_MB = 256  # per task: what one task may hold of records before spilling a sorted run to disk


class SpillingSorter:
    """Writes records of one structured ``dtype`` to ``final`` sorted by their fields in order (the order
    datatrove's readers check), holding at most ``capacity`` records: a full buffer is sorted and spilled as a
    run file; at the end the runs are merged chunk by chunk (a k-way merge whose every round emits the records
    no unread record can precede). datatrove's own MinHash and exact-dedup signature stages read a task's whole
    signature file into memory to sort it, which bounds a task's documents by RAM; this bounds them by disk."""

    fan_in = 128  # runs merged at once

    def __init__(self, folder, final: str, run_prefix: str, dtype: np.dtype, capacity: int):
        self.folder, self.final, self.run_prefix, self.dtype = folder, final, run_prefix, dtype
        self.capacity = max(int(capacity), 2)
        self.buf = np.empty(min(self.capacity, 1024), dtype=dtype)  # grows by doubling up to capacity
        self.n = 0
        self.runs: list[str] = []
        self.total = 0

    def add(self, rec: np.ndarray) -> None:
        i = 0
        while i < len(rec):
            if self.n == len(self.buf) and len(self.buf) < self.capacity:
                grown = np.empty(min(2 * len(self.buf), self.capacity), dtype=self.dtype)
                grown[:self.n] = self.buf[:self.n]
                self.buf = grown
            take = min(len(rec) - i, len(self.buf) - self.n)
            self.buf[self.n:self.n + take] = rec[i:i + take]
            self.n += take
            i += take
            if self.n == self.capacity:
                self._spill()

    def _sorted(self, rec: np.ndarray) -> np.ndarray:
        names = self.dtype.names
        return rec[np.lexsort([rec[k] for k in reversed(names)])]

    def _spill(self) -> None:
        path = f"{self.run_prefix}{len(self.runs):05d}"
        with self.folder.open(path, "wb") as f:
            f.write(self._sorted(self.buf[:self.n]).tobytes())
        self.runs.append(path)
        self.total += self.n
        self.n = 0

    def finish(self) -> int:
        if not self.runs:
            with self.folder.open(self.final, "wb") as f:
                f.write(self._sorted(self.buf[:self.n]).tobytes())
            self.total += self.n
            self.buf = None
            return self.total
        if self.n:
            self._spill()
        self.buf = None
        runs, level = self.runs, 0
        while len(runs) > self.fan_in:  # a cascade keeps the open files (and read buffers) bounded
            merged = []
            for i in range(0, len(runs), self.fan_in):
                merged.append(f"{self.run_prefix}m{level}_{i // self.fan_in:05d}")
                self._merge(runs[i:i + self.fan_in], merged[-1])
                for path in runs[i:i + self.fan_in]:
                    self.folder.rm(path)
            runs, level = merged, level + 1
        self._merge(runs, self.final)
        for path in runs:
            self.folder.rm(path)
        return self.total

    def _merge(self, runs: list[str], target: str) -> None:
        # read buffers share the sort buffer's budget, at least 256 records each (few syscalls per record)
        chunk = max(self.capacity // (len(runs) + 1), 256)
        size = self.dtype.itemsize
        files = [self.folder.open(p, "rb") for p in runs]
        bufs = [np.empty(0, dtype=self.dtype) for _ in files]
        done = [False] * len(files)
        try:
            with self.folder.open(target, "wb") as out:
                while True:
                    for k, f in enumerate(files):
                        if not len(bufs[k]) and not done[k]:
                            data = f.read(size * chunk)
                            bufs[k] = np.frombuffer(data, dtype=self.dtype)
                            done[k] = len(data) < size * chunk
                    live = [bufs[k][-1].item() for k in range(len(files)) if not done[k] and len(bufs[k])]
                    if not live and not any(len(b) for b in bufs):
                        break
                    bound = min(live) if live else None
                    take = []
                    for k, b in enumerate(bufs):
                        lo, hi = 0, len(b)
                        if bound is not None:
                            while lo < hi:  # records <= bound: no unread record of any run precedes them
                                mid = (lo + hi) // 2
                                if b[mid].item() <= bound:
                                    lo = mid + 1
                                else:
                                    hi = mid
                        else:
                            lo = len(b)
                        take.append(b[:lo])
                        bufs[k] = b[lo:]
                    out.write(self._sorted(np.concatenate(take)).tobytes())
        finally:
            for f in files:
                f.close()


# --- near dedup ---------------------------------------------------------------------------------------------

def _native():
    """csrc/minhash.cpp, or None (not built, or disabled by MEGATRON_CODE_NATIVE_MINHASH=0)."""
    if os.environ.get("MEGATRON_CODE_NATIVE_MINHASH", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        from megatron_code.curation import _minhash_cpp
    except ImportError:
        return None
    return _minhash_cpp


_MULT = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio, odd: a bijective multiplier (Knuth)


def token_hashes_numpy(text: str) -> np.ndarray:
    """XXH64 (seed 0) of each code token's UTF-8 bytes (lone surrogates kept, as ``surrogatepass``)."""
    return np.fromiter((xxhash.xxh64_intdigest(t.encode("utf-8", "surrogatepass")) for t in code_tokens(text)),
                       dtype=np.uint64)


def shingle_hashes_numpy(text: str, n_grams: int) -> np.ndarray:
    """The distinct shingle hashes of ``text`` (csrc/minhash.cpp's definition, in numpy)."""
    ids = token_hashes_numpy(text)
    if not ids.size:
        return ids
    n = min(n_grams, ids.size)
    width = ids.size - n + 1
    acc = ids[:width].copy()
    for k in range(1, n):
        acc *= _MULT
        acc += ids[k:k + width]
    # splitmix64's finalizer (Steele, Lea & Flood 2014): every input bit reaches every output bit
    acc ^= acc >> np.uint64(30)
    acc *= np.uint64(0xBF58476D1CE4E5B9)
    acc ^= acc >> np.uint64(27)
    acc *= np.uint64(0x94D049BB133111EB)
    acc ^= acc >> np.uint64(31)
    return np.unique(acc)


def signature_numpy(text: str, n_grams: int, a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """The numpy twin of csrc/minhash.cpp: min over shingles of ``(a*x + b mod 2^64) >> 32`` (odd ``a``),
    or None for a document without a token."""
    x = shingle_hashes_numpy(text, n_grams)
    if not x.size:
        return None
    sig = np.full(a.shape[0], np.iinfo(np.uint64).max, dtype=np.uint64)
    block = 1024  # rows per block: the temporaries stay in cache
    for i in range(0, x.size, block):
        phv = x[i:i + block, None] * a[None, :]
        phv += b[None, :]
        phv >>= np.uint64(32)
        np.minimum(sig, phv.min(axis=0), out=sig)
    return sig


class CodeMinhashSignature(MinhashDedupSignature):
    """datatrove's MinHash signature stage on code-token shingles (see the module docstring), writing datatrove's
    bucket files (``bucket_XXX/{task:05d}.minhash.sig``, ``<{rows}QI`` records sorted) for its bucket stage, plus
    ``full/{task:05d}.sig``: every document's whole signature (uint32, the permutations keep 32 bits), in document
    order, read back by :class:`OrderedMinhashCluster` to verify candidates.

    The signatures come from csrc/minhash.cpp (``signature_numpy`` is its twin, used when the extension is not
    built): tokenizing, token hashing and shingle hashing in Python cost as much as the signatures (profiled,
    NOTES.md). Permutations are multiply-add-shift, ``(a*x + b mod 2^64) >> 32`` with odd ``a`` (Dietzfelbinger et
    al. 1997, a universal family), instead of datatrove's ``(a*x + b) mod (2^61 - 1)``, whose 64-bit modulo was
    65% of datatrove's stage. Memory per task is bounded by ``sort_buffer_mb`` (:class:`SpillingSorter`), not by
    its document count. ``string_shingles`` keeps datatrove's own shingle hashing and permutations for the A/B
    (BENCHMARKS.md, "Corpus curation")."""

    name = "near dedup: signatures"
    batch_docs = 64

    def __init__(self, output_folder: DataFolderLike, config: MinhashConfig, string_shingles: bool = False,
                 sort_buffer_mb: float = DEFAULT_SORT_BUFFER_MB):
        super().__init__(output_folder, config=config, language=CodeWordTokenizer())
        self.string_shingles = string_shingles
        self.sort_buffer_mb = sort_buffer_mb

    def permutations(self) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.parameters
        return (a.reshape(-1) | np.uint64(1)).astype(np.uint64), b.reshape(-1).astype(np.uint64)

    def signatures(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(signatures [docs, num_perm] uint64, has_tokens [docs] bool)``."""
        a, b = self.permutations()
        ext = _native()
        if ext is not None:
            return ext.signatures([t.encode("utf-8", "surrogatepass") for t in texts], self.config.n_grams, a, b)
        sigs = np.zeros((len(texts), a.shape[0]), dtype=np.uint64)
        ok = np.zeros(len(texts), dtype=bool)
        for i, t in enumerate(texts):
            s = signature_numpy(t, self.config.n_grams, a, b)
            if s is not None:
                sigs[i], ok[i] = s, True
        return sigs, ok

    def get_shingles(self, text: str) -> np.ndarray:
        if self.string_shingles:
            h = self._hash_func
            return np.fromiter((h(s) for s in shingle_strings(text, self.config.n_grams)),
                               dtype=np.uint64).reshape((-1, 1))
        return shingle_hashes_numpy(text, self.config.n_grams).reshape((-1, 1))

    def get_signature(self, shingles: np.ndarray) -> list[list[int]]:
        if self.string_shingles:
            return super().get_signature(shingles)
        a, b = self.permutations()
        sig = np.full(a.shape[0], np.iinfo(np.uint64).max, dtype=np.uint64)
        x = shingles.reshape(-1)
        for i in range(0, x.size, 1024):
            np.minimum(sig, (((x[i:i + 1024, None] * a) + b) >> np.uint64(32)).min(axis=0), out=sig)
        return [part.tolist() for part in np.split(sig, self.config.num_buckets)]

    def record_dtype(self) -> np.dtype:
        r = self.config.hashes_per_bucket
        return np.dtype([(f"field{i + 1}", f"<{self.config.hash_config.struct_format}") for i in range(r)]
                        + [(f"field{r + 1}", "<u4")])

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1):
        if self.string_shingles:
            return super().run(data, rank, world_size)
        cfg = self.config
        nb, r, P = cfg.num_buckets, cfg.hashes_per_bucket, cfg.num_buckets * cfg.hashes_per_bucket
        if cfg.hash_config.struct_format != "Q":
            raise ValueError("near dedup writes 64-bit bucket records (HashConfig(precision=64))")
        dtype = self.record_dtype()
        per_bucket = int(self.sort_buffer_mb * 2 ** 20) // (nb * dtype.itemsize)
        with self.track_time():
            sorters = [SpillingSorter(self.output_folder, f"bucket_{bi:03d}/{rank:05d}.minhash.sig",
                                      f"runs/{rank:05d}/bucket_{bi:03d}_", dtype, per_bucket) for bi in range(nb)]
            full = self.output_folder.open(f"full/{rank:05d}.sig", "wb")
            batch: list[str] = []
            doc_idx = 0

            def flush():
                nonlocal doc_idx
                sigs, ok = self.signatures(batch)
                full.write(sigs.astype("<u4").tobytes())  # values < 2^32: the permutations keep the high 32 bits
                idx = np.arange(doc_idx, doc_idx + len(batch), dtype="<u4")[ok]
                sigs = sigs[ok]
                rows = np.empty((len(idx), dtype.itemsize), dtype=np.uint8)
                rows[:, 8 * r:] = idx.view(np.uint8).reshape(-1, 4)
                for bi in range(nb):
                    rows[:, :8 * r] = np.ascontiguousarray(sigs[:, bi * r:(bi + 1) * r]).astype("<u8") \
                        .view(np.uint8).reshape(-1, 8 * r)
                    sorters[bi].add(rows.view(dtype).reshape(-1))
                doc_idx += len(batch)
                batch.clear()

            for doc in data:
                self.stat_update(StatHints.total)
                batch.append(doc.text)
                if len(batch) == self.batch_docs:
                    flush()
            if batch:
                flush()
            full.close()
            for s in sorters:
                s.finish()
            assert P == self.num_hashes


class OrderedMinhashCluster(PipelineStep):
    """Verify datatrove's candidate pairs (``*.dups``: task1, doc1, task2, doc2) and cluster them.

    LSH candidates are verified against the full signature (estimated Jaccard = fraction of equal MinHash values
    >= ``threshold``), which lets :func:`lsh_params` favour recall: datatrove's cluster stage trusts every
    candidate, so its precision is whatever the S-curve gives just below the threshold. Pairs are streamed from
    the ``.dups`` files; a pair whose documents are already in one cluster is skipped (it cannot change the
    clusters), any other is verified on the two documents' rows of ``full/{task}.sig`` (read by offset). Union-find
    then keeps each cluster's first document in corpus order (lowest task, then index): the connected components
    do not depend on the order pairs arrive in. Memory: the union-find over documents that have a verified near
    copy, nothing per candidate pair or per corpus document. The others go to ``{task:06d}.remove`` (sorted), the
    format of datatrove's ``MinhashDedupFilter``."""

    type = "dedup"
    name = "near dedup: verify + clusters"
    open_files = 64

    def __init__(self, input_folder: DataFolderLike, sig_folder: DataFolderLike, output_folder: DataFolderLike,
                 config: MinhashConfig, threshold: float):
        super().__init__()
        self.input_folder = get_datafolder(input_folder)
        self.sig_folder = get_datafolder(sig_folder)
        self.output_folder = get_datafolder(output_folder)
        self.config = config
        self.threshold = threshold

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1):
        if world_size != 1:
            raise ValueError("near-dedup clustering runs as one task")
        P = self.config.num_buckets * self.config.hashes_per_bucket
        row = 4 * P
        files: OrderedDict = OrderedDict()
        cache: OrderedDict = OrderedDict()

        def signature(node: tuple[int, int]) -> np.ndarray:
            sig = cache.get(node)
            if sig is not None:
                cache.move_to_end(node)
                return sig
            f = files.get(node[0])
            if f is None:
                if len(files) >= self.open_files:
                    files.popitem(last=False)[1].close()
                f = files[node[0]] = self.sig_folder.open(f"full/{node[0]:05d}.sig", "rb")
            else:
                files.move_to_end(node[0])
            f.seek(node[1] * row)
            sig = cache[node] = np.frombuffer(f.read(row), dtype="<u4")
            if len(cache) > 4096:
                cache.popitem(last=False)
            return sig

        parent: dict[tuple[int, int], tuple[int, int]] = {}

        def find(x):
            root = x
            while parent.get(root, root) != root:
                root = parent[root]
            while x != root:  # path compression
                parent[x], x = root, parent[x]
            return root

        candidates = verified = 0
        with self.track_time():
            try:
                for name in sorted(self.input_folder.list_files(glob_pattern="*.dups")):
                    with self.input_folder.open(name, "rb") as f:
                        for f1, d1, f2, d2 in read_tuples_from_file(f, "4I", lines_to_buffer=1000):
                            candidates += 1
                            a, b = (f1, d1), (f2, d2)
                            ra, rb = find(a), find(b)
                            if ra == rb:
                                continue
                            if np.count_nonzero(signature(a) == signature(b)) < self.threshold * P:
                                continue
                            verified += 1
                            lo, hi = (ra, rb) if ra < rb else (rb, ra)
                            parent[hi] = lo  # the root is always the cluster's first document
            finally:
                for f in files.values():
                    f.close()
            self.stat_update("candidate_pairs", value=candidates)
            self.stat_update("verified_pairs", value=verified)
            removals: dict[int, list[int]] = {}
            roots = set()
            for node in list(parent):
                root = find(node)
                roots.add(root)
                if node != root:
                    removals.setdefault(node[0], []).append(node[1])
            self.stat_update("clusters", value=len(roots))
            for task, docs in sorted(removals.items()):
                docs.sort()
                self.stat_update("to_remove", value=len(docs))
                with self.output_folder.open(f"{task:06d}.remove", "wb") as out:
                    out.write(np.asarray(docs, dtype="<u4").tobytes())


def normalized_content(doc: Document) -> str:
    """What exact dedup hashes: notebook cells' sources, else the text; line endings unified, trailing spaces
    stripped, leading/trailing blank lines dropped."""
    cells = doc.metadata.get("cells")
    text = "\n\x00\n".join(c["source"] for c in cells) if cells is not None else doc.text
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


def _sha256_64(content: str) -> int:
    return int.from_bytes(hashlib.sha256(content.encode("utf-8")).digest()[:8], "little")


def exact_config() -> ExactDedupConfig:
    return ExactDedupConfig(content_getter=normalized_content, hash_config=HashConfig(precision=64, hash_fc="sha1"))


class Sha256ExactSignature(ExactDedupSignature):
    """datatrove's exact-dedup signature stage hashing with SHA-256 (first 64 bits) instead of SHA-1."""

    name = "exact dedup: signatures"

    def __init__(self, output_folder: DataFolderLike, config: ExactDedupConfig | None = None,
                 sort_buffer_mb: float = DEFAULT_SORT_BUFFER_MB):
        super().__init__(output_folder, config or exact_config())
        self.hash_fc = _sha256_64
        self.sort_buffer_mb = sort_buffer_mb

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1):
        """datatrove's file (``0000/{task:05d}.c4_sig``: hash, priority, doc sorted), through
        :class:`SpillingSorter` instead of one in-memory list of the task's signatures."""
        if self.finder_workers != 1 or self.config.document_priority is not None:
            raise ValueError("exact dedup here runs one finder task and no document priority")
        dtype = get_sig_dtype(self.config.hash_config)
        sorter = SpillingSorter(self.output_folder, f"0000/{rank:05d}{ExtensionHelperSD.stage_1_signature}",
                                f"runs/{rank:05d}_", dtype, int(self.sort_buffer_mb * 2 ** 20) // dtype.itemsize)
        pending: list[tuple[int, int, int]] = []
        for doc_idx, doc in enumerate(data):
            with self.stats.time_stats:
                self.stat_update(StatHints.total)
                pending.append((self.hash_fc(self.config.content_getter(doc)), 1, doc_idx))
                if len(pending) == 4096:
                    sorter.add(np.array(pending, dtype=dtype))
                    pending.clear()
        if pending:
            sorter.add(np.array(pending, dtype=dtype))
        sorter.finish()
