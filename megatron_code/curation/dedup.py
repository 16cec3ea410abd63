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
import re
import struct
from dataclasses import dataclass

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.io import DataFolderLike, get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig, ExactDedupSignature
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
from datatrove.utils.binaryio import read_tuples_from_file
from datatrove.utils.hashing import HashConfig
from datatrove.utils.word_tokenizers import WordTokenizer

_TOKEN = re.compile(r"\w+|[^\w\s]")

# Jaccard threshold presets: the study's 0.9; StarCoder's documented 0.7 (Li et al. 2023, section 3.3: 5-grams,
# Jaccard 0.7) and 0.85 (the dedup setting of the BigCode near-dedup tooling).
PRESETS = {"study": 0.9, "starcoder-0.85": 0.85, "starcoder": 0.7}


def code_tokens(text: str) -> list[str]:
    """Identifiers/numbers and single punctuation characters; whitespace (indentation, line breaks) dropped."""
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
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = np.trapezoid(1 - (1 - grid_lo ** r) ** b, grid_lo)
            fn = np.trapezoid((1 - grid_hi ** r) ** b, grid_hi)
            err = fp_weight * fp + fn_weight * fn
            if err < best_err - 1e-12:
                best, best_err = (b, r), err
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


class CodeMinhashSignature(MinhashDedupSignature):
    """datatrove's MinHash signature stage on code-token shingles (see the module docstring).

    Shingles are hashed without building their strings: each distinct token is hashed once (xxhash64, cached),
    and the n-token window hashes are combined with vectorized polynomial arithmetic (mod 2^64, then a 64-bit
    finalizer). Joining and hashing every shingle string, as ``shingle_strings`` + datatrove's ``get_shingles``
    do, is not what costs (profiled: datatrove's modular permutations are 65%), but it is free; ``string_shingles``
    keeps datatrove's own shingle hashing and permutations for the A/B (BENCHMARKS.md, "Corpus curation")."""

    name = "near dedup: signatures"
    _MULT = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio, odd: a bijective multiplier (Knuth)

    def __init__(self, output_folder: DataFolderLike, config: MinhashConfig, string_shingles: bool = False):
        super().__init__(output_folder, config=config, language=CodeWordTokenizer())
        self.string_shingles = string_shingles
        self._token_hash: dict[str, int] = {}

    def get_shingles(self, text: str) -> np.ndarray:
        if self.string_shingles:
            h = self._hash_func
            return np.fromiter((h(s) for s in shingle_strings(text, self.config.n_grams)),
                               dtype=np.uint64).reshape((-1, 1))
        toks = code_tokens(text)
        if not toks:
            return np.zeros((0, 1), dtype=np.uint64)
        cache, h = self._token_hash, self._hash_func
        if len(cache) > 1 << 20:  # bounded memory on huge vocabularies
            cache.clear()
        ids = np.fromiter((cache[t] if t in cache else cache.setdefault(t, h(t)) for t in toks), dtype=np.uint64,
                          count=len(toks))
        n = min(self.config.n_grams, len(toks))
        width = len(toks) - n + 1
        acc = ids[:width].copy()
        for k in range(1, n):
            acc *= self._MULT
            acc += ids[k:k + width]
        # splitmix64's finalizer: every input bit reaches every output bit before MinHash's permutations
        acc ^= acc >> np.uint64(30)
        acc *= np.uint64(0xBF58476D1CE4E5B9)
        acc ^= acc >> np.uint64(27)
        acc *= np.uint64(0x94D049BB133111EB)
        acc ^= acc >> np.uint64(31)
        return np.unique(acc).reshape((-1, 1))

    def get_signature(self, shingles: np.ndarray) -> list[list[int]]:
        """MinHash values by multiply-add-shift hashing, ``(a*x + b mod 2^64) >> 32`` with odd ``a``
        (Dietzfelbinger et al. 1997, a universal family), instead of datatrove's ``(a*x + b) mod (2^61 - 1)``: a
        64-bit modulo per shingle and permutation was 65% of the stage's time (profiled on stdlib files). Rows
        are processed in blocks so the temporaries stay in cache."""
        if self.string_shingles:
            return super().get_signature(shingles)
        a, b = self.parameters
        a = a | np.uint64(1)
        x = shingles.reshape(-1)
        sig = np.full(a.shape[1], np.iinfo(np.uint64).max, dtype=np.uint64)
        block = 1024
        for i in range(0, x.size, block):
            phv = x[i:i + block, None] * a
            phv += b
            phv >>= np.uint64(32)
            np.minimum(sig, phv.min(axis=0), out=sig)
        return [part.tolist() for part in np.split(sig.astype(self.config.hash_config.np_dtype),
                                                   self.config.num_buckets)]


class OrderedMinhashCluster(PipelineStep):
    """Verify datatrove's candidate pairs (``*.dups``: task1, doc1, task2, doc2) and cluster them.

    LSH candidates are verified against the full signature (estimated Jaccard = fraction of equal MinHash values
    >= ``threshold``), which lets :func:`lsh_params` favour recall: datatrove's cluster stage trusts every
    candidate, so its precision is whatever the S-curve gives just below the threshold. The signatures of
    candidate documents only are read back from the signature stage's sorted bucket files, streamed in chunks.
    Union-find then keeps each cluster's first document in corpus order (lowest task, then index); the others
    go to ``{task:06d}.remove`` (sorted), the format of datatrove's ``MinhashDedupFilter``."""

    type = "dedup"
    name = "near dedup: verify + clusters"

    def __init__(self, input_folder: DataFolderLike, sig_folder: DataFolderLike, output_folder: DataFolderLike,
                 config: MinhashConfig, threshold: float, chunk_records: int = 1 << 16):
        super().__init__()
        self.input_folder = get_datafolder(input_folder)
        self.sig_folder = get_datafolder(sig_folder)
        self.output_folder = get_datafolder(output_folder)
        self.config = config
        self.threshold = threshold
        self.chunk_records = chunk_records

    def _signatures(self, wanted: dict[int, np.ndarray]) -> dict[tuple[int, int], np.ndarray]:
        cfg = self.config
        r, b = cfg.hashes_per_bucket, cfg.num_buckets
        dtype = np.dtype([("h", f"<{cfg.hash_config.np_descr[1:]}", (r,)), ("doc", "<u4")])
        sigs: dict[tuple[int, int], np.ndarray] = {}
        for bi in range(b):
            for name in sorted(self.sig_folder.list_files(subdirectory=f"bucket_{bi:03d}")):
                task = int(name.rsplit("/", 1)[-1].split(".")[0])
                docs = wanted.get(task)
                if docs is None:
                    continue
                with self.sig_folder.open(name, "rb") as f:
                    while chunk := f.read(dtype.itemsize * self.chunk_records):
                        rec = np.frombuffer(chunk, dtype=dtype)
                        for rec_i in np.flatnonzero(np.isin(rec["doc"], docs)):
                            key = (task, int(rec["doc"][rec_i]))
                            sig = sigs.get(key)
                            if sig is None:
                                sig = sigs[key] = np.zeros((b, r), dtype=cfg.hash_config.np_dtype)
                            sig[bi] = rec["h"][rec_i]
        return sigs

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1):
        if world_size != 1:
            raise ValueError("near-dedup clustering runs as one task")
        with self.track_time():
            pairs = set()
            for name in sorted(self.input_folder.list_files(glob_pattern="*.dups")):
                with self.input_folder.open(name, "rb") as f:
                    for f1, d1, f2, d2 in read_tuples_from_file(f, "4I", lines_to_buffer=1000):
                        a, b = (f1, d1), (f2, d2)
                        pairs.add((a, b) if a < b else (b, a))
            self.stat_update("candidate_pairs", value=len(pairs))
            wanted: dict[int, set] = {}
            for a, b in pairs:
                wanted.setdefault(a[0], set()).add(a[1])
                wanted.setdefault(b[0], set()).add(b[1])
            sigs = self._signatures({t: np.fromiter(sorted(d), dtype=np.uint32) for t, d in wanted.items()})
            parent: dict[tuple[int, int], tuple[int, int]] = {}

            def find(x):
                root = x
                while parent.get(root, root) != root:
                    root = parent[root]
                while x != root:  # path compression
                    parent[x], x = root, parent[x]
                return root

            verified = 0
            for a, b in sorted(pairs):
                if float(np.mean(sigs[a] == sigs[b])) < self.threshold:
                    continue
                verified += 1
                ra, rb = find(a), find(b)
                if ra != rb:
                    lo, hi = (ra, rb) if ra < rb else (rb, ra)
                    parent[hi] = lo  # the root is always the cluster's first document
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
                    out.write(struct.pack(f"<{len(docs)}I", *docs))


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

    def __init__(self, output_folder: DataFolderLike, config: ExactDedupConfig | None = None):
        super().__init__(output_folder, config or exact_config())
        self.hash_fc = _sha256_64
