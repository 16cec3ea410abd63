#!/usr/bin/env python
"""Curation benchmarks (BENCHMARKS.md, "Corpus curation"), interleaved A/B, medians.

near-dedup: documents/s of the whole near dedup (signatures -> candidate pairs -> clusters -> documents removed)
  A  ours: tools/curate_corpus.py's near dedup, everything a user's run does (read the JSONL, datatrove's MinHash
     bucket and filter stages, our signature stage (csrc/minhash.cpp) and cluster stage (candidates verified on the
     full signature, keep-first), write the JSONL; uncompressed output, `output: {compression: none}`),
     LocalPipelineExecutor, 1 task;
  B  datasketch: MinHash (update_batch, same 256 permutations count, the same shingles) + MinHashLSH with the same
     bands x rows, each candidate verified with MinHash.jaccard >= threshold, the same keep-first union-find;
  C  datatrove's own MinHash stages as shipped (its text normalization and word shingles, words split on
     whitespace: its tokenizers, even the whitespace one, need spaCy; its cluster stage, no verification), same
     bands x rows, reading and writing the same uncompressed JSONL.
  Recall and precision of each against exact Jaccard of the shingle sets, on planted pairs.
signatures: the signature computation alone, in memory (ours: csrc/minhash.cpp, and its numpy twin / datasketch /
  datatrove's hashing).
filters: MB/s of the study's filter steps (reader, language, quality) with 1 and 2 workers (4 tasks).

    python benchmarks/bench_curation.py --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

THRESHOLD, NUM_PERM, N_GRAMS = 0.9, 256, 5


def make_corpus(d: str, n_pairs: int, n_stdlib: int):
    from megatron_code.curation.dedup import shingle_strings
    from megatron_code.data.corpus import _iter_stdlib, stdlib_root

    rng = random.Random(0)
    vocab = [f"v{i}" for i in range(5000)]
    docs, pairs = [], []
    for k in range(n_pairs):
        lines = [[rng.choice(vocab), "=", rng.choice(vocab), "(", rng.choice(vocab), ",", rng.choice(vocab), ")"]
                 for _ in range(80)]
        b = [list(x) for x in lines]
        for i in rng.sample(range(80), rng.choice([0, 1, 2, 3, 6, 10, 20])):
            b[i][0] = rng.choice(vocab) + "_x"
        ta = "".join(" ".join(x) + "\n" for x in lines)
        tb = "".join(" ".join(x) + "\n" for x in b)
        sa, sb = set(shingle_strings(ta, N_GRAMS)), set(shingle_strings(tb, N_GRAMS))
        pairs.append((len(docs), len(docs) + 1, len(sa & sb) / len(sa | sb)))
        docs += [ta, tb]
    for i, doc in enumerate(_iter_stdlib(stdlib_root())):
        if i >= n_stdlib:
            break
        docs.append(doc["text"])
    path = os.path.join(d, "docs.jsonl")
    with open(path, "w") as f:
        for i, t in enumerate(docs):
            f.write(json.dumps({"text": t, "id": str(i), "path": f"{i}.py"}) + "\n")
    return path, docs, pairs


def score(removed: set[int], pairs) -> tuple[float, float]:
    truth = {(a, b) for a, b, j in pairs if j >= THRESHOLD}
    found = {(a, b) for a, b, _ in pairs if a in removed or b in removed}
    tp = len(found & truth)
    planted_removed = {x for a, b, _ in pairs for x in (a, b)} & removed
    return tp / max(len(truth), 1), tp / max(len(planted_removed), 1)


def run_ours(path, work) -> set[int]:
    from megatron_code.curation.pipeline import curate

    curate([path], work, {"name": "b", "exact_dedup": False, "output": {"compression": "none"},
                          "near_dedup": {"threshold": THRESHOLD, "num_perm": NUM_PERM, "n_grams": N_GRAMS}},
           tasks=1, progress=False)
    kept = set()
    with open(os.path.join(work, "data", "00000.jsonl")) as f:
        for line in f:
            kept.add(int(json.loads(line)["id"]))
    return kept


def run_datasketch(docs, bands, rows) -> set[int]:
    import numpy as np
    from datasketch import MinHash, MinHashLSH

    from megatron_code.curation.dedup import shingle_strings

    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM, params=(bands, rows))
    sigs = []
    for i, t in enumerate(docs):
        m = MinHash(num_perm=NUM_PERM, seed=1)
        m.update_batch([s.encode() for s in shingle_strings(t, N_GRAMS)])
        sigs.append(m)
        lsh.insert(i, m)
    parent = {}

    def find(x):
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    for i, m in enumerate(sigs):
        for j in lsh.query(m):
            if j > i and float(np.mean(m.hashvalues == sigs[j].hashvalues)) >= THRESHOLD:
                a, b = find(i), find(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    return {x for x in range(len(docs)) if find(x) == x}


def run_datatrove_stock(path, work, bands, rows) -> set[int]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                                  MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers.jsonl import JsonlWriter
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.word_tokenizers import WordTokenizer

    class WhitespaceTokenizer(WordTokenizer):  # datatrove's own needs spaCy; str.split is what it approximates
        def word_tokenize(self, text):
            return text.split()

        def sent_tokenize(self, text):
            return text.splitlines()

        def span_tokenize(self, text):
            return []

    cfg = MinhashConfig(n_grams=N_GRAMS, num_buckets=bands, hashes_per_bucket=rows,
                        hash_config=HashConfig(precision=64))
    tok = WhitespaceTokenizer()
    read = lambda: JsonlReader(os.path.dirname(path), glob_pattern="docs.jsonl")  # noqa: E731
    ex = lambda steps, n, name: LocalPipelineExecutor(steps, tasks=n, workers=1,  # noqa: E731
                                                      logging_dir=os.path.join(work, "logs", name)).run()
    ex([read(), MinhashDedupSignature(os.path.join(work, "sigs"), config=cfg, language=tok)], 1, "s")
    ex([MinhashDedupBuckets(os.path.join(work, "sigs"), os.path.join(work, "b"), config=cfg)], bands, "b")
    ex([MinhashDedupCluster(os.path.join(work, "b"), os.path.join(work, "r"), config=cfg)], 1, "c")
    ex([read(), MinhashDedupFilter(os.path.join(work, "r")),
        JsonlWriter(os.path.join(work, "out"), output_filename="${rank}.jsonl", compression=None)], 1, "f")
    kept = set()
    with open(os.path.join(work, "out", "00000.jsonl")) as f:
        for line in f:
            kept.add(int(json.loads(line)["id"]))
    return kept


def bench_near_dedup(reps: int, n_pairs: int, n_stdlib: int) -> dict:
    from megatron_code.curation.dedup import lsh_params

    bands, rows = lsh_params(THRESHOLD, NUM_PERM)
    tmp = tempfile.mkdtemp(prefix="bench_curation_")
    try:
        path, docs, pairs = make_corpus(tmp, n_pairs, n_stdlib)
        n = len(docs)
        times = {"ours": [], "datasketch": [], "datatrove": []}
        quality = {}
        for rep in range(reps):
            order = ["ours", "datasketch", "datatrove"] if rep % 2 == 0 else ["datatrove", "datasketch", "ours"]
            for name in order:
                work = os.path.join(tmp, f"{name}{rep}")
                t0 = time.perf_counter()
                if name == "ours":
                    kept = run_ours(path, work)
                elif name == "datasketch":
                    kept = run_datasketch(docs, bands, rows)
                else:
                    kept = run_datatrove_stock(path, work, bands, rows)
                times[name].append(time.perf_counter() - t0)
                quality[name] = score(set(range(n)) - kept, pairs)
                shutil.rmtree(work, ignore_errors=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        return {"docs": n, "bytes": sum(len(t.encode()) for t in docs), "bands_rows": [bands, rows],
                "median_s": med, "docs_per_s": {k: n / v for k, v in med.items()},
                "times": times, "recall_precision": quality,
                "ours_vs_datasketch": med["datasketch"] / med["ours"],
                "ours_vs_datatrove": med["datatrove"] / med["ours"]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_signatures(reps: int, n_files: int = 300) -> dict:
    """The signatures alone, in memory: MinHash signatures of stdlib files, ours (CodeMinhashSignature.signatures:
    csrc/minhash.cpp; and the numpy twin, get_shingles + get_signature) vs
    datasketch (MinHash.update_batch over the same shingle strings, 256 permutations) vs datatrove's own shingle
    hashing and (a*x+b) mod (2^61-1) permutations on the same tokens (string_shingles=True)."""
    from datasketch import MinHash

    from megatron_code.curation.dedup import CodeMinhashSignature, NearDedupParams, shingle_strings
    from megatron_code.data.corpus import _iter_stdlib, stdlib_root

    texts = [d["text"] for _, d in zip(range(n_files), _iter_stdlib(stdlib_root()))]
    cfg = NearDedupParams(threshold=THRESHOLD, num_perm=NUM_PERM, n_grams=N_GRAMS).config()
    ours = CodeMinhashSignature(tempfile.mkdtemp(), cfg)
    dt = CodeMinhashSignature(tempfile.mkdtemp(), cfg, string_shingles=True)

    def sig(step):
        for x in texts:
            sh = step.get_shingles(x)
            if sh.size:
                step.get_signature(sh)

    def native():
        for i in range(0, len(texts), CodeMinhashSignature.batch_docs):
            ours.signatures(texts[i:i + CodeMinhashSignature.batch_docs])

    def ds():
        for x in texts:
            MinHash(num_perm=NUM_PERM).update_batch([t.encode() for t in shingle_strings(x, N_GRAMS)])

    fns = {"ours": native, "ours_numpy_twin": lambda: sig(ours), "datasketch": ds,
           "datatrove_hashing": lambda: sig(dt)}
    times = {k: [] for k in fns}
    for rep in range(reps):
        for name in (list(fns) if rep % 2 == 0 else list(fns)[::-1]):
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"files": len(texts), "mb": sum(len(t.encode()) for t in texts) / 1e6, "median_s": med, "times": times,
            "ours_vs_datasketch": med["datasketch"] / med["ours"],
            "ours_numpy_twin_vs_datasketch": med["datasketch"] / med["ours_numpy_twin"],
            "ours_vs_datatrove_hashing": med["datatrove_hashing"] / med["ours"]}


def bench_filters(reps: int) -> dict:
    from megatron_code.curation.pipeline import curate
    from megatron_code.data.corpus import _iter_stdlib, stdlib_root

    tmp = tempfile.mkdtemp(prefix="bench_filters_")
    try:
        files = [open(os.path.join(tmp, f"part{i}.jsonl"), "w") for i in range(4)]
        total = 0
        for i, doc in enumerate(_iter_stdlib(stdlib_root())):
            files[i % 4].write(json.dumps(doc) + "\n")
            total += len(doc["text"].encode())
        for f in files:
            f.close()
        cfg = {"name": "filters", "steps": [{"language": {"languages": "python"}}, {"quality": {}}],
               "exact_dedup": False, "near_dedup": False}
        times = {1: [], 2: []}
        for rep in range(reps):
            for w in ((1, 2) if rep % 2 == 0 else (2, 1)):
                out = os.path.join(tmp, f"out{w}_{rep}")
                t0 = time.perf_counter()
                curate([os.path.join(tmp, f"part{i}.jsonl") for i in range(4)], out, cfg, tasks=4, workers=w,
                       progress=False)
                times[w].append(time.perf_counter() - t0)
                shutil.rmtree(out, ignore_errors=True)
        med = {w: statistics.median(v) for w, v in times.items()}
        return {"mb": total / 1e6, "median_s": med, "mb_per_s": {w: total / 1e6 / v for w, v in med.items()},
                "times": times, "speedup_2_workers": med[1] / med[2]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=300)
    ap.add_argument("--stdlib-files", type=int, default=2000)  # the whole stdlib here (1,786 files)
    ap.add_argument("--only", choices=["near-dedup", "signatures", "filters"], default=None)
    args = ap.parse_args()
    from loguru import logger

    logger.remove()
    out = {}
    if args.only in (None, "near-dedup"):
        out["near_dedup"] = bench_near_dedup(args.reps, args.pairs, args.stdlib_files)
    if args.only in (None, "signatures"):
        out["signatures"] = bench_signatures(args.reps)
    if args.only in (None, "filters"):
        out["filters"] = bench_filters(args.reps)
    print(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
