"""Packed GPT training samples over an indexed dataset (FORMATS.md section 2), and the train/valid/test builder.

Megatron semantics (split ranges, packing across documents, sample k = rows k..k+1 inclusive, shuffled sample
order) with one deliberate deviation: the order depends only on (dataset, split, sequence length, seed, epoch).

- Document order: epoch e is a permutation of the split's sequence ids drawn from rng(seed, e, 0).
- Sample stream: packed samples of S+1 tokens over the concatenated epochs (sample k starts at token k*S).
- Epoch blocks: sample k belongs to epoch e when its first token lies in epoch e, i.e. k in
  [ceil(e*T/S), ceil((e+1)*T/S)) with T tokens per epoch. Each block is permuted with rng(seed, e, 1).
- A dataset asked for n samples builds the smallest number of whole blocks E holding n samples (plus the
  document order of the following epoch(s) that their last samples spill into).

Nothing depends on n except how many blocks exist, so a run extended from 100 to 200 iterations sees the same
first 100 iterations. Megatron's separate shuffle of a partial last epoch is implied: every epoch is its own
permutation. ``num_samples=None`` means one pass over the split without repetition (evaluation sets).
"""

from __future__ import annotations

import os
import shutil
import warnings

import numpy as np

from ..errors import UserError
from .blended import BlendedDataset, normalize_weights, parse_data_path, samples_per_dataset
from .helpers import IndexCache, build_sample_idx
from .indexed import IndexedDataset

INDEX_VERSION = 1  # bump when the index construction changes, so old caches are not reused


class DatasetConfigError(UserError, ValueError):
    pass


def parse_split(split: str) -> list[float]:
    """``"969,30,1"`` (or ``"98/2/0"``) -> three normalized weights (missing ones are 0)."""
    text = str(split).replace("/", ",")
    try:
        parts = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise DatasetConfigError(f"--split {split!r} must be comma-separated numbers like 969,30,1") from None
    if not parts or len(parts) > 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise DatasetConfigError(f"--split {split!r} needs 1-3 non-negative weights that are not all zero")
    parts += [0.0] * (3 - len(parts))
    total = sum(parts)
    return [p / total for p in parts]


def split_ranges(split: str, num_sequences: int) -> list[tuple[int, int]]:
    """Contiguous ``[round(a*K), round(b*K))`` ranges of sequence ids for train/valid/test (a, b cumulative)."""
    weights = parse_split(split)
    bounds = [0]
    acc = 0.0
    for w in weights:
        acc += w
        bounds.append(int(round(acc * num_sequences)))
    bounds[-1] = num_sequences
    return [(bounds[i], bounds[i + 1]) for i in range(3)]


def _rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(stream)]))


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def index_bytes(num_docs: int, doc_epochs: int, num_samples: int, wide: bool = False) -> int:
    """Bytes of a GPTDataset's three index arrays: document order (doc_epochs x docs), sample rows
    ((n + 1) x 2) in int32 (int64 past 2^31 documents or rows), shuffle (n, int64)."""
    item = 8 if wide or doc_epochs * num_docs >= 2 ** 31 else 4
    return doc_epochs * num_docs * item + (num_samples + 1) * 2 * item + num_samples * 8


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_index_fits(name: str, needed: int, num_samples, cache_dir: str | None = None) -> None:
    """Refuse, before building anything, a sample index that cannot fit in this machine's available memory (it is
    built in memory) or in the free space of --data-cache-path: e.g. --train-iters 1e11 on a small corpus."""
    limits = []
    mem = _available_memory()
    if mem is not None:
        limits.append((mem, "available memory"))
    if cache_dir:
        probe = cache_dir
        while probe and not os.path.exists(probe):
            probe = os.path.dirname(probe)
        try:
            limits.append((shutil.disk_usage(probe or ".").free, f"free space in --data-cache-path {cache_dir}"))
        except OSError:
            pass
    for limit, what in limits:
        if needed > limit:
            raise DatasetConfigError(
                f"{name}: the sample index for {num_samples:,} samples needs {needed / 2 ** 30:,.1f} GiB "
                f"({needed:,} bytes), more than the {limit / 2 ** 30:,.1f} GiB of {what}: lower --train-iters / "
                f"--train-samples (or --eval-iters), or use a larger corpus")


class GPTDataset:
    """Samples of ``seq_length + 1`` tokens from sequences ``[start, end)`` of ``indexed``.

    ``ds[i] -> {"tokens": int64 (seq_length + 1,)}``; ``epoch_of(i)`` is the epoch block of sample ``i`` (for
    rng derivation by objectives: rng = f(seed, epoch, i)).
    """

    def __init__(self, indexed: IndexedDataset, seq_range: tuple[int, int], seq_length: int, seed: int,
                 num_samples: int | None, cache: IndexCache | None = None, name: str | None = None):
        self.indexed = indexed
        self.start, self.end = int(seq_range[0]), int(seq_range[1])
        self.seq_length = int(seq_length)
        self.seed = int(seed)
        self.name = name or indexed.prefix
        if self.end <= self.start:
            raise DatasetConfigError(f"{self.name}: empty split range [{self.start}, {self.end})")
        sizes = indexed.sizes
        T = int(sizes[self.start:self.end].sum(dtype=np.int64))
        if T < 1:
            raise DatasetConfigError(f"{self.name}: the split [{self.start}, {self.end}) holds no tokens")
        S = self.seq_length
        self.tokens_per_epoch = T
        if num_samples is None:  # one pass, no repetition: samples fully inside epoch 0
            n_epochs_blocks, n = 1, (T - 1) // S
            if n < 1:
                raise DatasetConfigError(f"{self.name}: {T} tokens are too few for one sample of {S}+1 tokens")
            doc_epochs = 1
            block_starts = [0, n]
        else:
            if num_samples < 1:
                raise DatasetConfigError(f"{self.name}: num_samples must be >= 1 (got {num_samples})")
            # smallest E with ceil(E*T/S) >= n  <=>  E*T > (n-1)*S
            n_epochs_blocks = max(1, (int(num_samples) - 1) * S // T + 1)
            n = _ceil_div(n_epochs_blocks * T, S)
            doc_epochs = _ceil_div(n * S + 1, T)  # epochs of document order the last sample reaches into
        # Before anything of this size is allocated (the epoch list below included): refuse what cannot fit.
        building = cache is not None and cache.cache_dir is not None and not cache.load_only
        check_index_fits(self.name, index_bytes(self.end - self.start, doc_epochs, n, self.end > 2 ** 31 - 1)
                         + 8 * (n_epochs_blocks + 1), n, cache_dir=cache.cache_dir if building else None)
        if num_samples is not None:
            block_starts = [_ceil_div(e * T, S) for e in range(n_epochs_blocks + 1)]
        self.num_epochs = n_epochs_blocks
        self._block_starts = np.asarray(block_starts, dtype=np.int64)
        # "idx": the dataset's content (size + SHA-256 of its .idx), so a dataset rewritten in place (same path,
        # even the same counts) never reuses the sample index of its previous content.
        desc = {"class": "GPTDataset", "version": INDEX_VERSION, "path": os.path.realpath(indexed.prefix),
                "idx": indexed.content_key(),
                "num_sequences": len(indexed), "num_tokens": indexed.num_tokens, "range": [self.start, self.end],
                "seq_length": S, "seed": self.seed, "blocks": n_epochs_blocks, "one_pass": num_samples is None}

        def build():
            # int32 below 2^31 documents, like Megatron's document index: half the bytes to cache, map and
            # stream through the sample-index walk. The permutation is the same for either dtype.
            ids = np.arange(self.start, self.end, dtype=np.int32 if self.end <= np.iinfo(np.int32).max else np.int64)
            doc_idx = np.concatenate([_rng(self.seed, e, 0).permutation(ids) for e in range(doc_epochs)])
            sample_idx = build_sample_idx(sizes, doc_idx, S, n)
            shuffle = np.concatenate([
                block_starts[e] + _rng(self.seed, e, 1).permutation(block_starts[e + 1] - block_starts[e])
                for e in range(len(block_starts) - 1)]).astype(np.int64)
            return {"doc_idx": doc_idx, "sample_idx": sample_idx, "shuffle_idx": shuffle}

        arrays = (cache or IndexCache(None)).get_or_build(desc, build)
        self.doc_idx = arrays["doc_idx"]
        self.sample_idx = arrays["sample_idx"]
        self.shuffle_idx = arrays["shuffle_idx"]

    def __len__(self) -> int:
        return int(self.shuffle_idx.size)

    def epoch_of(self, i: int) -> int:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        return int(np.searchsorted(self._block_starts, i, side="right") - 1)

    def __getitem__(self, i: int) -> dict:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        j = int(self.shuffle_idx[i])
        d0, o0 = (int(x) for x in self.sample_idx[j])
        d1, o1 = (int(x) for x in self.sample_idx[j + 1])
        get = self.indexed.get
        if d0 == d1:
            tokens = np.asarray(get(int(self.doc_idx[d0]), o0, o1 - o0 + 1), dtype=np.int64)
        else:
            parts = [get(int(self.doc_idx[d0]), o0)]
            parts += [get(int(self.doc_idx[d])) for d in range(d0 + 1, d1)]
            parts.append(get(int(self.doc_idx[d1]), 0, o1 + 1))
            tokens = np.concatenate(parts).astype(np.int64)
        return {"tokens": tokens}


def _open(prefix: str, opened: dict) -> IndexedDataset:
    if prefix not in opened:
        opened[prefix] = IndexedDataset(prefix)
    return opened[prefix]


def _build_split(entries, ranges_of, num_samples, seq_length, seed, cache, opened, split_name):
    """One split from a data-path list: a GPTDataset, or a BlendedDataset over several."""
    weights, prefixes = parse_data_path(entries)
    parts, kept = [], []
    for j, p in enumerate(prefixes):
        ds = _open(p, opened)
        r = ranges_of(ds)
        if r[1] > r[0]:
            parts.append((p, ds, r))
            kept.append(j)
        elif weights is not None and weights[j] > 0:
            # Small datasets can have an empty valid/test range; the others keep their relative weights.
            warnings.warn(f"{p}: the {split_name} split is empty; blending the {split_name} split without it")
    if not parts:
        return None
    if weights is None:  # proportional to the split's token count
        weights = [float(ds.sizes[r[0]:r[1]].sum(dtype=np.int64)) for _, ds, r in parts]
    else:
        weights = [weights[j] for j in kept]
    if len(parts) == 1:
        p, ds, r = parts[0]
        return GPTDataset(ds, r, seq_length, seed, num_samples, cache, name=f"{p} ({split_name})")
    weights = normalize_weights(weights)
    per_ds = samples_per_dataset(weights, num_samples) if num_samples is not None else [None] * len(parts)
    children = [GPTDataset(ds, r, seq_length, seed, n, cache, name=f"{p} ({split_name})")
                for (p, ds, r), n in zip(parts, per_ds)]
    desc = {"paths": [os.path.realpath(p) for p, _, _ in parts], "idx": [ds.content_key() for _, ds, _ in parts],
            "ranges": [list(r) for _, _, r in parts],
            "seq_length": seq_length, "seed": seed, "split": split_name}
    return BlendedDataset(children, weights, num_samples, cache, description=desc,
                          names=[c.name for c in children])


def num_samples_for(*, global_batch_size: int, train_iters: int | None = None, train_samples: int | None = None,
                    eval_interval: int = 1000, eval_iters: int = 10) -> tuple[int, int, int]:
    """Megatron's (train, valid, test) sample counts: train = iters x batch (or train_samples); valid covers
    every evaluation of the run, ``(train_iters // eval_interval + 1) * eval_iters`` batches; test one
    evaluation. The trainer and tools/build_index.py both use this, so their caches match."""
    if train_samples is None:
        if train_iters is None:
            raise DatasetConfigError("give --train-iters or --train-samples")
        train_samples = train_iters * global_batch_size
    iters = train_iters if train_iters is not None else -(-train_samples // global_batch_size)
    evals = iters // max(eval_interval, 1) + 1
    return int(train_samples), int(evals * eval_iters * global_batch_size), int(eval_iters * global_batch_size)


def build_gpt_datasets(*, data_path=None, split: str = "969,30,1", train_data_path=None, valid_data_path=None,
                       test_data_path=None, seq_length: int, seed: int, num_samples, cache_dir: str | None = None,
                       is_builder: bool = True, barrier=None) -> tuple:
    """(train, valid, test) datasets, ``None`` where a split is empty or asks for 0 samples.

    ``data_path``: Megatron ``--data-path`` list (``["0.3", "A", "0.7", "B"]`` or ``["A", "B"]``) split by
    ``split``; or ``train/valid/test_data_path``: one blend list per split, each dataset used whole.
    ``num_samples[k] = None`` means one pass over that split. ``is_builder`` ranks build missing caches in
    ``cache_dir``; then ``barrier()`` is called (every rank must call this function); other ranks load the caches.
    With ``cache_dir=None`` every rank builds in memory (deterministic, identical).
    """
    separate = any(x for x in (train_data_path, valid_data_path, test_data_path))
    if data_path and separate:
        raise DatasetConfigError("use either --data-path (with --split) or --train-data-path/--valid-data-path/"
                                 "--test-data-path, not both")
    if not data_path and not separate:
        raise DatasetConfigError("no data: pass --data-path PREFIX (a .bin/.idx prefix) or --train-data-path")
    if len(num_samples) != 3:
        raise DatasetConfigError(f"num_samples must be (train, valid, test), got {num_samples}")

    def build_all(load_only: bool):
        cache = IndexCache(cache_dir, load_only=load_only and cache_dir is not None)
        opened: dict = {}
        out = []
        for k, name in enumerate(("train", "valid", "test")):
            n = num_samples[k]
            if n is not None and n <= 0:
                out.append(None)
                continue
            if data_path:
                def ranges_of(ds, k=k):
                    return split_ranges(split, len(ds))[k]
                entries = data_path
            else:
                entries = (train_data_path, valid_data_path, test_data_path)[k]
                if not entries:
                    out.append(None)
                    continue

                def ranges_of(ds):
                    return (0, len(ds))
            out.append(_build_split(entries, ranges_of, n, seq_length, seed, cache, opened, name))
        return tuple(out)

    result = build_all(load_only=False) if is_builder else None
    if barrier is not None:
        barrier()
    if result is None:
        result = build_all(load_only=True)
    return result


def check_vocab(datasets, vocab_size: int) -> None:
    """Raise if any token id of the underlying indexed datasets lies outside ``[0, vocab_size)``."""
    seen = set()

    def visit(ds):
        if ds is None:
            return
        if isinstance(ds, BlendedDataset):
            for child in ds.datasets:
                visit(child)
        elif id(ds.indexed) not in seen:
            seen.add(id(ds.indexed))
            ds.indexed.check_vocab(vocab_size)

    for d in datasets:
        visit(d)


__all__ = ["GPTDataset", "build_gpt_datasets", "num_samples_for", "parse_split", "split_ranges", "check_vocab",
           "DatasetConfigError",
           ]
