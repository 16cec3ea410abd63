"""Issue 16 item 5: a corpus larger than RAM must work, so the memory of dedup must not grow with the corpus.

Two cheap, deterministic checks (no wall clock, no RSS noise):

* the dedup stages (exact and MinHash signatures, datatrove's bucket merge and exact finder, our cluster step) run
  in this process under ``tracemalloc`` (which also sees numpy's buffers) on N and on 4N documents streamed from a
  generator, with the same planted copies. The extra 3N documents bring ~3.7 MB of signatures (per document: 14
  bytes exact, 13 bands x (8 x 19 + 4) bytes MinHash, 4 x 256 bytes for verification); the peak of traced memory
  must grow by less than a tenth of that (measured: it does not grow). With a sort buffer larger than the corpus
  (a task's signatures all in memory, as datatrove's own stages sort each bucket file in RAM) the same
  measurement exceeds that bound: the check can fail;
* the whole pipeline with a sort buffer of a few records (hundreds of spilled runs, cascaded merges) writes
  byte-identical output and report counts to the same run with the default buffer.

Readers, filters and writers stream one document at a time (datatrove's design; our reader reads JSONL line by
line and refuses single files over its size limit); the Megatron writer keeps one size per document (8 bytes,
as Megatron's own index builder does)."""

from __future__ import annotations

import collections
import json
import os
import random
import tracemalloc

from datatrove.data import Document
from datatrove.pipeline.dedup.exact_dedup import ExactFindDedups
from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets

from megatron_code.curation.dedup import (CodeMinhashSignature, NearDedupParams, OrderedMinhashCluster,
                                          Sha256ExactSignature, exact_config)
from megatron_code.curation.pipeline import curate

BUCKET_RECORD = 8 * 19 + 4
SIG_BYTES_PER_DOC = 14 + 13 * BUCKET_RECORD + 4 * 256


def texts(n_docs: int):
    """n_docs random 6-line documents, then 20 exact and 20 near copies (a line appended) of the first 40."""
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(5000)]
    first = []
    for i in range(n_docs):
        t = "".join(f"{rng.choice(vocab)} = {rng.choice(vocab)}({rng.choice(vocab)}, {i})\n" for _ in range(6))
        if i < 40:
            first.append(t)
        yield t
    for i in range(20):
        yield first[i]
        yield first[20 + i] + "z = 1\n"


def run_dedup_stages(folder: str, corpus: list[str], sort_mb: float) -> tuple[int, int]:
    cfg = NearDedupParams(threshold=0.9, num_perm=256).config()
    assert (cfg.num_buckets, cfg.hashes_per_bucket) == (13, 19)

    def drain(result):
        if result is not None:
            collections.deque(result, maxlen=0)

    docs = lambda: (Document(text=t, id=str(i)) for i, t in enumerate(corpus))  # noqa: E731
    drain(CodeMinhashSignature(f"{folder}/sigs", cfg, sort_buffer_mb=sort_mb).run(docs(), 0, 1))
    drain(Sha256ExactSignature(f"{folder}/exact_sigs", sort_buffer_mb=sort_mb).run(docs(), 0, 1))
    for band in range(cfg.num_buckets):
        drain(MinhashDedupBuckets(f"{folder}/sigs", f"{folder}/pairs", config=cfg).run(None, band, cfg.num_buckets))
    cluster = OrderedMinhashCluster(f"{folder}/pairs", f"{folder}/sigs", f"{folder}/remove", cfg, 0.9)
    drain(cluster.run())
    drain(ExactFindDedups(f"{folder}/exact_sigs", f"{folder}/exact_dups", exact_config()).run())
    near = os.path.getsize(f"{folder}/remove/000000.remove") // 4
    exact = os.path.getsize(f"{folder}/exact_dups/00000/00000.c4_dup") // 4
    return near, exact


def peak_growth(tmp_path, sort_mb: float, n: int) -> int:
    tracemalloc.start()
    try:
        run_dedup_stages(str(tmp_path / "warm"), list(texts(50)), sort_mb)  # imports, caches: not measured
        peaks = []
        for k in (1, 4):
            corpus = list(texts(k * n))  # the texts themselves (~300 bytes each) are outside the measurement
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            removed = run_dedup_stages(str(tmp_path / f"n{k}"), corpus, sort_mb)
            peaks.append(tracemalloc.get_traced_memory()[1] - base)
            # at both sizes: near dedup (no exact dedup before it here) finds the 20 near and 20 exact copies,
            # exact dedup the 20 exact copies
            assert removed == (40, 20), removed
    finally:
        tracemalloc.stop()
    return peaks[1] - peaks[0]


def test_dedup_memory_does_not_grow_with_the_corpus(tmp_path):
    n = 400
    growth = peak_growth(tmp_path, sort_mb=0.25, n=n)
    print(f"peak growth {growth} bytes for {3 * n * SIG_BYTES_PER_DOC} bytes of extra signatures")
    assert growth < 3 * n * SIG_BYTES_PER_DOC / 10, (growth, 3 * n * SIG_BYTES_PER_DOC)


def test_the_check_catches_in_memory_signatures(tmp_path):
    n = 400
    growth = peak_growth(tmp_path, sort_mb=1024, n=n)  # no spill: a task's signatures all in memory
    print(f"peak growth {growth} bytes with the signatures in memory")
    assert growth >= 3 * n * SIG_BYTES_PER_DOC / 10, growth  # the bound the other test asserts, exceeded


def test_spilled_sorts_give_the_same_pipeline_output(tmp_path):
    rng = random.Random(1)
    docs = list(texts(150))
    rng.shuffle(docs)
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"text": t, "id": str(i)}) + "\n" for i, t in enumerate(docs)))
    outs = {}
    for mb in (0.002, 256):  # 0.002 MB: 13 bucket records per run; the exact signatures in runs of 149
        cfg = {"name": "m", "exact_dedup": True, "near_dedup": {"threshold": 0.9}, "sort_buffer_mb": mb,
               "output": {"compression": "none"}}
        rep = curate([str(src)], str(tmp_path / f"o{mb}"), cfg, tasks=2, progress=False)
        data = b"".join((tmp_path / f"o{mb}" / "data" / f).read_bytes()
                        for f in sorted(os.listdir(tmp_path / f"o{mb}" / "data")))
        outs[mb] = (data, [(r["step"], r["docs_out"]) for r in rep["steps"]])
    assert outs[0.002] == outs[256]
    assert outs[256][1] == [("exact_dedup", 170), ("near_dedup", 150)]
