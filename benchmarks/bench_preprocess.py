#!/usr/bin/env python
"""Preprocessing throughput: tools/preprocess_data.py against a Megatron-style per-document pool.

Both use the same tokenizer (byte-level BPE, vocab 8192, trained on a slice of the corpus), the same number of
worker processes (2), the standard-library JSONL corpus, ``--append-eod``, and write the same ``.bin/.idx``
(checked byte for byte). The baseline is how Megatron-LM's tools/preprocess_data.py works: the main process
reads lines, ``pool.imap(encoder.encode, lines, 32)`` parses and tokenizes one document per call in a worker
(the `tokenizers` encoder on the whole document) and returns a Python list of ids, and the main process appends
each document to the files. Ours batches ~1 MB of documents per task and encodes through the tokenizer
wrapper, which for our code BPE is the exact C++ encoder (csrc/bpe.cpp; ``--no-fast`` turns it off, then long
files are cut into line-aligned ~4 KB pieces for the `tokenizers` encoder).
Runs are interleaved (baseline, ours, baseline, ours, ...); medians and their ratio are printed.

With ``--megatron-lm DIR`` (a Megatron-LM checkout; tested with core_v0.16.1) the peer is Megatron-LM's own
tools/preprocess_data.py instead of the imitation, and both sides run as the command a user types, in a fresh
interpreter: ``python tools/preprocess_data.py --input C --output-prefix P --tokenizer-type HuggingFaceTokenizer
--tokenizer-model T --append-eod --workers N`` (theirs through the runner of
tests/fixtures/megatron_preprocess/make_fixture.py, which supplies two import shims and changes none of their code).

    python benchmarks/bench_preprocess.py --repeats 3
    python benchmarks/bench_preprocess.py --repeats 3 --megatron-lm /path/to/Megatron-LM
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one thread per worker process on both sides

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from megatron_code.data.corpus import build_stdlib_corpus  # noqa: E402
from megatron_code.data.indexed import IndexedDatasetWriter, dtype_for_vocab  # noqa: E402
from megatron_code.data.tokenizer import build_tokenizer, train_code_tokenizer  # noqa: E402


def load_tool():
    from megatron_code.commands import preprocess_data
    return preprocess_data


# --- baseline: Megatron-style one document per task -----------------------------------------------------------
_TOK = None


def _naive_init(tok_dir):
    global _TOK
    _TOK = build_tokenizer("HuggingFaceTokenizer", tokenizer_model=tok_dir)


def _naive_encode(line):
    text = json.loads(line)["text"]
    # The tokenizer as Megatron calls it: one whole document per call of the backend (tokenizers) encoder.
    ids = _TOK.backend.encode(text, add_special_tokens=False).ids
    ids.append(_TOK.eod)
    return ids, len(line)


def naive_preprocess(path, tok_dir, prefix, workers):
    tok = build_tokenizer("HuggingFaceTokenizer", tokenizer_model=tok_dir)
    with open(path, "r", encoding="utf-8") as fin, mp.get_context("fork").Pool(
            workers, initializer=_naive_init, initargs=(tok_dir,)) as pool:
        encoded = pool.imap(_naive_encode, fin, 32)
        with IndexedDatasetWriter(prefix + "_text_document", dtype_for_vocab(tok.vocab_size)) as w:
            for ids, _ in encoded:
                w.add_document(np.array(ids, dtype=w.dtype))


def chunk_corpus(path, n_lines):
    """The same text as many small documents (n_lines lines each), like snippet-level code corpora."""
    out = f"{path[:-len('.jsonl')]}.chunks{n_lines}.jsonl"
    with open(path, encoding="utf-8") as fin, open(out, "w", encoding="utf-8") as fout:
        for line in fin:
            lines = json.loads(line)["text"].splitlines(keepends=True)
            for i in range(0, len(lines), n_lines):
                fout.write(json.dumps({"text": "".join(lines[i:i + n_lines])}) + "\n")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work-dir", default="/tmp/bench_preprocess")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--chunk-lines", type=int, default=0,
                    help="re-cut every file into documents of this many lines (0: one document per file)")
    ap.add_argument("--no-fast", action="store_true",
                    help="ours without the C++ code-BPE encoder (MEGATRON_CODE_FAST_BPE=0; the baseline is "
                         "unaffected: it always calls the tokenizers encoder)")
    ap.add_argument("--megatron-lm", metavar="DIR",
                    help="peer: Megatron-LM's own tools/preprocess_data.py from this checkout (both sides as CLI "
                         "commands in fresh interpreters)")
    args = ap.parse_args()
    if args.no_fast:
        os.environ["MEGATRON_CODE_FAST_BPE"] = "0"  # read when each process builds its tokenizer
    os.makedirs(args.work_dir, exist_ok=True)
    full = corpus = build_stdlib_corpus(os.path.join(args.work_dir, "stdlib"))["train"]
    if args.chunk_lines:
        corpus = chunk_corpus(full, args.chunk_lines)
    tok_dir = os.path.join(args.work_dir, f"tok{args.vocab_size}")
    if not os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
        texts = [json.loads(line)["text"] for i, line in enumerate(open(full, encoding="utf-8")) if i % 8 == 0]
        train_code_tokenizer(texts, args.vocab_size, tok_dir)
    tool = load_tool()
    mb = os.path.getsize(corpus) / 1e6
    with open(corpus, "rb") as f:
        n_docs = sum(1 for _ in f)
    fast = build_tokenizer("HuggingFaceTokenizer", tokenizer_model=tok_dir)._fast is not None
    print(f"corpus {corpus}: {mb:.1f} MB, {n_docs} documents; tokenizer {tok_dir}; workers {args.workers}; "
          f"ours uses the C++ code-BPE encoder: {fast}")

    def ours():
        tool.preprocess([corpus], os.path.join(args.work_dir, "ours"), "HuggingFaceTokenizer", tok_dir,
                        append_eod=True, workers=args.workers, progress=False)

    def baseline():
        naive_preprocess(corpus, tok_dir, os.path.join(args.work_dir, "naive"), args.workers)

    if args.megatron_lm:
        sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures", "megatron_preprocess"))
        from make_fixture import RUNNER, include_flag
        flags = ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", tok_dir, "--append-eod",
                 "--workers", str(args.workers), "--input", corpus]
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))

        def fresh(prefix):  # our tool refuses to overwrite an existing output (theirs overwrites): start clean
            for ext in (".bin", ".idx"):
                if os.path.exists(prefix + "_text_document" + ext):
                    os.remove(prefix + "_text_document" + ext)
            return prefix

        def ours():  # noqa: F811 - the CLI, as the peer is run
            fresh(os.path.join(args.work_dir, "ours"))
            subprocess.run([sys.executable, os.path.join(ROOT, "tools", "preprocess_data.py"), *flags,
                            "--output-prefix", os.path.join(args.work_dir, "ours")], check=True, env=env,
                           capture_output=True)

        def baseline():  # noqa: F811 - Megatron-LM's own tool
            fresh(os.path.join(args.work_dir, "naive"))
            subprocess.run([sys.executable, "-c", RUNNER, args.megatron_lm, *flags, *include_flag(args.megatron_lm),
                            "--output-prefix", os.path.join(args.work_dir, "naive")], check=True, env=env,
                           capture_output=True)

    print("baseline = " + (f"Megatron-LM's tools/preprocess_data.py ({args.megatron_lm}); ours = our CLI" if
                           args.megatron_lm else "the Megatron-style pool above; ours = preprocess() in process"))

    def cpu_seconds():
        # main process + reaped pool workers: robust to other load on a shared machine, unlike wall time
        return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
                   for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))

    times = {"baseline": [], "ours": []}
    cpu = {"baseline": [], "ours": []}
    for _ in range(args.repeats):
        for name, fn in (("baseline", baseline), ("ours", ours)):
            t, c = time.perf_counter(), cpu_seconds()
            fn()
            times[name].append(time.perf_counter() - t)
            cpu[name].append(cpu_seconds() - c)
            print(f"  {name}: {times[name][-1]:.2f} s wall ({mb / times[name][-1]:.2f} MB/s), "
                  f"{cpu[name][-1]:.2f} CPU s ({mb / cpu[name][-1]:.2f} MB per CPU s), load average "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
    for ext in (".bin", ".idx"):
        with open(os.path.join(args.work_dir, "ours_text_document" + ext), "rb") as fa, \
                open(os.path.join(args.work_dir, "naive_text_document" + ext), "rb") as fb:
            assert fa.read() == fb.read(), f"outputs differ ({ext})"
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"baseline median {med['baseline']:.2f} s = {mb / med['baseline']:.2f} MB/s; ours median "
          f"{med['ours']:.2f} s = {mb / med['ours']:.2f} MB/s; speedup {med['baseline'] / med['ours']:.2f}x "
          f"(identical .bin/.idx)")
    mc = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"CPU time: baseline median {mc['baseline']:.2f} s, ours median {mc['ours']:.2f} s, ratio "
          f"{mc['baseline'] / mc['ours']:.2f}x")


if __name__ == "__main__":
    main()
