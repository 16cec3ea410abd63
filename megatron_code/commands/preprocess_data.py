"""Tokenize a corpus into Megatron ``.bin/.idx`` files: ``{output_prefix}_{json_key}_document.bin/.idx``.

Inputs: JSONL files (.jsonl, .jsonl.gz, .jsonl.zst) or directories of source files (``text`` key only).
Flags follow Megatron's tools/preprocess_data.py (``--input --output-prefix --json-keys --tokenizer-type
--tokenizer-model --vocab-file --merge-file --append-eod --workers --partitions``) plus ``--skip-bad-lines``.

Parallelism: the main process only reads raw bytes and writes tokens; workers receive *batches* of ~1 MB of raw
JSONL lines (or source texts), parse JSON, tokenize the whole batch with the backend's batch encoder (no offset
tracking) and return one flat numpy array plus lengths per key, which the main process appends with one write.
This removes Megatron's per-document costs (pickled Python int lists, one write per document); on corpora of
large documents the tokenizer itself dominates, which for our code BPE is the exact C++ encoder of
megatron_code/data/fast_bpe.py (BENCHMARKS.md, "Data pipeline").

Example::

    python tools/preprocess_data.py --input data/stdlib/train.jsonl --output-prefix data/stdlib_train \\
        --tokenizer-type HuggingFaceTokenizer --tokenizer-model tok/ --append-eod --workers 2
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import multiprocessing as mp
import os
import signal
import sys
import time

import numpy as np

from megatron_code.data.corpus import (CorpusError, iter_jsonl_lines, iter_source_tree,
                                       parse_jsonl_line)
from megatron_code.data.identity import DatasetTokenizerError, sidecar_path, write_sidecar
from megatron_code.data.indexed import (IndexedDatasetError, IndexedDatasetWriter, dtype_for_vocab,
                                        merge_datasets)
from megatron_code.data.objectives.fim import FIMConfig, FIMError, apply_fim_to_document
from megatron_code.data.objectives.rng import sample_rng
from megatron_code.data.tokenizer import TOKENIZER_TYPES, TokenizerError, build_tokenizer
from megatron_code.errors import UserError

BATCH_BYTES = 1 << 20  # ~1 MB of input per worker task: big enough to amortize IPC, small enough to balance
BATCH_DOCS = 512


class PreprocessError(UserError, ValueError):
    pass


def output_prefix_for(output_prefix: str, key: str) -> str:
    return f"{output_prefix}_{key}_document"


# --- input batching (main process) ------------------------------------------------------------------------

def _is_jsonl(path: str) -> bool:
    return any(path.endswith(s) for s in (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json", ".json.gz", ".jsonl.zstd"))


def iter_batches(inputs, json_keys, skip_bad_lines, stats):
    """Yield tasks ``(kind, path, items, nbytes)``; kind "jsonl": items = [(lineno, raw bytes)],
    kind "texts": items = [{key: text}]."""
    for path in inputs:
        if os.path.isdir(path):
            if list(json_keys) != ["text"]:
                raise PreprocessError(f"{path} is a directory of source files, which only has the 'text' key; "
                                      f"drop --json-keys")
            items, nbytes = [], 0
            for doc in iter_source_tree(path, skip_bad_files=skip_bad_lines, stats=stats):
                items.append({"text": doc["text"]})
                nbytes += doc["size"]
                if nbytes >= BATCH_BYTES or len(items) >= BATCH_DOCS:
                    yield "texts", path, items, nbytes
                    items, nbytes = [], 0
            if items:
                yield "texts", path, items, nbytes
        elif _is_jsonl(path):
            items, nbytes = [], 0
            for lineno, line in iter_jsonl_lines(path):
                items.append((lineno, line))
                nbytes += len(line)
                if nbytes >= BATCH_BYTES or len(items) >= BATCH_DOCS:
                    yield "jsonl", path, items, nbytes
                    items, nbytes = [], 0
            if items:
                yield "jsonl", path, items, nbytes
        elif not os.path.exists(path):
            raise PreprocessError(f"input not found: {path}")
        else:
            raise PreprocessError(f"{path}: unsupported input; give .jsonl/.jsonl.gz/.jsonl.zst files or a "
                                  f"directory of source files")


# --- worker side ------------------------------------------------------------------------------------------

class _Encoder:
    """Per-process state: the tokenizer (built once per worker) and the encoding options."""

    def __init__(self, tok_args: dict, json_keys, append_eod: bool, skip_bad_lines: bool, fim: dict | None = None,
                 include_special_tokens: bool = True):
        self.tokenizer = build_tokenizer(**tok_args)
        self.include_special_tokens = include_special_tokens
        # Document-level FIM (before packing): document d gets rng (seed, 0, d), so the output does not depend on
        # the number of workers or partitions.
        self.fim = None
        if fim and fim["rate"] > 0:
            self.fim = (FIMConfig(rate=fim["rate"], spm_rate=fim["spm_rate"], mode="document"), fim["seed"])
            apply_fim_to_document(np.zeros(0, dtype=np.int64), sample_rng(0, 0, 0), self.fim[0],
                                  self.tokenizer)  # fails early, with the fix, if the sentinels are missing
        self.json_keys = list(json_keys)
        self.append_eod = append_eod
        self.skip_bad_lines = skip_bad_lines
        self.dtype = dtype_for_vocab(self.tokenizer.vocab_size)

    def encode_task(self, task):
        """-> ({key: (flat tokens, lengths)}, n_docs, n_bad, nbytes)."""
        kind, path, items, nbytes, first_doc = task
        docs, bad, numbers = [], 0, []
        if kind == "jsonl":
            for k, (lineno, line) in enumerate(items):
                try:
                    docs.append(parse_jsonl_line(line, lineno, path, self.json_keys))
                    numbers.append(first_doc + k)
                except CorpusError:
                    if not self.skip_bad_lines:
                        raise
                    bad += 1
        else:
            docs = items
            numbers = list(range(first_doc, first_doc + len(items)))
        out = {}
        for key in self.json_keys:
            ids = self.tokenizer.encode_batch([d[key] for d in docs])
            if self.fim is not None:
                cfg, seed = self.fim
                ids = [apply_fim_to_document(np.asarray(x, dtype=np.int64), sample_rng(seed, 0, n), cfg,
                                             self.tokenizer).tolist() for x, n in zip(ids, numbers)]
            if self.include_special_tokens and self.tokenizer.adds_special_tokens:
                ids = [self.tokenizer.with_template(x) for x in ids]  # e.g. Llama's <s> before every document
            if self.append_eod:
                # As Megatron-LM's preprocess_data.py: EOD only after a document that has tokens; a document without
                # tokens is written as a document holding no sequence (empty __init__.py files add nothing).
                for x in ids:
                    if x:
                        x.append(self.tokenizer.eod)
            lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
            flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=self.dtype, count=int(lengths.sum()))
            out[key] = (flat, lengths)
        return out, len(docs), bad, nbytes


_WORKER: _Encoder | None = None  # one per worker process (set by the pool initializer)


def _init_worker(tok_args, json_keys, append_eod, skip_bad_lines, fim=None, include_special_tokens=True):
    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the main process stops us
    # The pool already uses every core we were given; the backend's own thread pool would oversubscribe them.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER = _Encoder(tok_args, json_keys, append_eod, skip_bad_lines, fim, include_special_tokens)


def _work(task):
    return _WORKER.encode_task(task)


# --- driver -----------------------------------------------------------------------------------------------

def _numbered(tasks, first_doc: int = 0):
    """Append each task's first document number (its position in the input order) for per-document rngs."""
    for kind, path, items, nbytes in tasks:
        yield kind, path, items, nbytes, first_doc
        first_doc += len(items)


def _run_one(inputs, output_prefix, tok_args, json_keys, append_eod, workers, skip_bad_lines, progress,
             fim=None, first_doc=0, include_special_tokens=True):
    encoder = _Encoder(tok_args, json_keys, append_eod, skip_bad_lines, fim,
                       include_special_tokens)  # also validates the tokenizer
    stats = {"bad_files": 0}
    writers = {k: IndexedDatasetWriter(output_prefix_for(output_prefix, k), encoder.dtype) for k in json_keys}
    totals = {"docs": 0, "bad": 0, "bytes": 0, "tokens": 0, "numbered": 0}  # numbered: docs + bad lines
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc="tokenizing", mininterval=0.5)
    start = time.perf_counter()
    pool = None
    try:
        batches = _numbered(iter_batches(inputs, json_keys, skip_bad_lines, stats), first_doc)
        if workers > 1:
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            pool = ctx.Pool(workers, initializer=_init_worker,
                            initargs=(tok_args, json_keys, append_eod, skip_bad_lines, fim, include_special_tokens))
            results = pool.imap(_work, batches)
        else:
            results = map(encoder.encode_task, batches)
        for out, n_docs, bad, nbytes in results:
            for key, (flat, lengths) in out.items():
                writers[key].add_documents(flat, lengths, empty_as_sequence=False)
                totals["tokens"] += int(flat.size)
            totals["docs"] += n_docs
            totals["bad"] += bad
            totals["numbered"] += n_docs + bad
            totals["bytes"] += nbytes
            if bar is not None:
                dt = max(time.perf_counter() - start, 1e-9)
                bar.update(nbytes)
                bar.set_postfix(docs=totals["docs"], docs_per_s=f"{totals['docs'] / dt:.0f}", refresh=False)
        if totals["docs"] == 0:
            raise PreprocessError(f"no documents found in {', '.join(inputs)}"
                                  + (f" ({totals['bad']} bad lines skipped)" if totals["bad"] else ""))
        for k, w in writers.items():
            # The tokenizer's fingerprint beside each dataset, checked by the trainer (data/identity.py). A replaced
            # dataset's old record goes first, so no dataset is ever paired with another tokenizer's record.
            with contextlib.suppress(FileNotFoundError):
                os.remove(sidecar_path(output_prefix_for(output_prefix, k)))
            w.finalize()
            write_sidecar(output_prefix_for(output_prefix, k), encoder.tokenizer)
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        if bar is not None:
            bar.close()
    totals["bad"] += stats["bad_files"]
    totals["seconds"] = time.perf_counter() - start
    return totals


def _split_inputs(inputs, partitions, scratch):
    """Partition i gets every partitions-th input file; a single JSONL file is split into contiguous line
    ranges written to files in `scratch`. Order of documents in the merged output equals the unpartitioned one."""
    if partitions <= 1:
        return [list(inputs)]
    if len(inputs) >= partitions:
        per = -(-len(inputs) // partitions)
        return [inputs[i:i + per] for i in range(0, len(inputs), per)]
    if len(inputs) != 1 or not _is_jsonl(inputs[0]):
        return [list(inputs)]
    lines = [line for _, line in iter_jsonl_lines(inputs[0])]
    per = -(-len(lines) // partitions)
    parts = []
    for i in range(partitions):
        chunk = lines[i * per:(i + 1) * per]
        if not chunk:
            continue
        part = os.path.join(scratch, f"lines{i}.jsonl")
        with open(part, "wb") as f:
            f.writelines(chunk)
        parts.append([part])
    return parts



class _Scratch:
    """A hidden working directory beside the output for --partitions (`.NAME.partitions-<pid>/`): the line-range
    copies of the input and the finished partitions live there, never beside the input or the output, where a
    later glob (`data/*.jsonl`, `data/*_text_document`) would take them for data. It is removed at the end; a run
    killed with SIGKILL (no `finally`) leaves it, and the next run removes it: its flock(2) died with its owner,
    so an unlockable directory belongs to a live run and is left alone."""

    def __init__(self, output_prefix: str):
        import fcntl
        import glob
        import shutil

        parent = os.path.dirname(os.path.abspath(output_prefix))
        os.makedirs(parent, exist_ok=True)
        base = os.path.basename(output_prefix)
        self.removed = []
        for old in glob.glob(os.path.join(parent, glob.escape(f".{base}.partitions-") + "*")):
            try:
                fd = os.open(os.path.join(old, "lock"), os.O_RDWR)
            except OSError:
                fd = None
            try:
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # held: a live run's
            finally:
                if fd is not None:
                    os.close(fd)
            shutil.rmtree(old, ignore_errors=True)
            self.removed.append(old)
        self.path = os.path.join(parent, f".{base}.partitions-{os.getpid()}")
        os.makedirs(self.path, exist_ok=True)
        self._fd = os.open(os.path.join(self.path, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def close(self) -> None:
        import shutil

        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._fd)


def preprocess(inputs, output_prefix, tokenizer_type, tokenizer_model=None, vocab_file=None, merge_file=None,
               json_keys=("text",), append_eod=False, workers=1, partitions=1, skip_bad_lines=False,
               progress=True, fim_rate=0.0, fim_spm_rate=0.5, fim_seed=1234, include_special_tokens=True,
               tokenizer_options: dict | None = None) -> dict:
    """Tokenize ``inputs`` into ``{output_prefix}_{key}_document.bin/.idx``; returns counts and seconds.

    As Megatron-LM's tools/preprocess_data.py: a tokenizer whose own template adds special tokens (a Llama-style
    tokenizer.json adding ``<s>``) writes them around every document unless ``include_special_tokens`` is False
    (Megatron's --tokenizer-hf-no-include-special-tokens); EOD follows only documents that have tokens, and a
    document without tokens is a document holding no sequence.

    With ``partitions > 1`` each partition is tokenized by the worker pool into a temporary dataset (in a hidden
    scratch directory, see _Scratch) and the parts are merged in order (the output is byte-identical to
    ``partitions=1``)."""
    if isinstance(inputs, str):
        inputs = [inputs]
    inputs = [os.fspath(p) for p in inputs]
    for p in inputs:
        if not os.path.exists(p):
            raise PreprocessError(f"input not found: {p}")
    json_keys = list(json_keys)
    if tokenizer_type == "Llama2Tokenizer":  # Megatron-LM main: a SentencePiece model (see config/cli.py)
        tokenizer_type = "SentencePieceTokenizer"
    tok_args = dict(tokenizer_type=tokenizer_type, tokenizer_model=tokenizer_model, vocab_file=vocab_file,
                    merge_file=merge_file, **(tokenizer_options or {}))
    fim = {"rate": fim_rate, "spm_rate": fim_spm_rate, "seed": fim_seed} if fim_rate > 0 else None
    if partitions <= 1:
        return _run_one(inputs, output_prefix, tok_args, json_keys, append_eod, workers, skip_bad_lines,
                        progress, fim, include_special_tokens=include_special_tokens)
    scratch = _Scratch(output_prefix)
    for old in scratch.removed:
        print(f"note: removed {old} (left by an interrupted --partitions run)", file=sys.stderr)
    try:
        groups = _split_inputs(inputs, partitions, scratch.path)
        if len(groups) == 1:
            return _run_one(groups[0], output_prefix, tok_args, json_keys, append_eod, workers, skip_bad_lines,
                            progress, fim, include_special_tokens=include_special_tokens)
        totals = {"docs": 0, "bad": 0, "bytes": 0, "tokens": 0, "numbered": 0, "seconds": 0.0}
        part_prefixes = []
        for i, group in enumerate(groups):
            pp = os.path.join(scratch.path, f"part{i}")
            t = _run_one(group, pp, tok_args, json_keys, append_eod, workers, skip_bad_lines, progress, fim,
                         first_doc=totals["numbered"], include_special_tokens=include_special_tokens)
            part_prefixes.append(pp)
            for k in totals:
                totals[k] += t[k]
        for key in json_keys:
            parts = [output_prefix_for(pp, key) for pp in part_prefixes]
            merge_datasets(parts, output_prefix_for(output_prefix, key))
        return totals
    finally:
        # Finished partitions are complete datasets: never leave them behind (after an error or Ctrl-C they would
        # look like valid output holding part of the corpus).
        scratch.close()


def check_output_prefix(output_prefix: str, json_keys, overwrite: bool) -> None:
    """Refuse prefixes that would write somewhere the user did not mean, and outputs that already exist."""
    fixed = output_prefix.removesuffix(".bin").removesuffix(".idx")
    for key in json_keys:
        fixed = fixed.removesuffix(f"_{key}_document")
    if fixed != output_prefix:
        raise PreprocessError(f"--output-prefix {output_prefix}: the tool appends '_KEY_document.bin/.idx' itself "
                              f"(it would write {output_prefix_for(output_prefix, json_keys[0])}.bin); pass "
                              f"--output-prefix {fixed}")
    if output_prefix.endswith(("/", os.sep)) or os.path.isdir(output_prefix):
        raise PreprocessError(f"--output-prefix {output_prefix} is a directory: give a file name prefix inside it, "
                              f"e.g. {os.path.join(output_prefix, 'code')} (writes "
                              f"{output_prefix_for(os.path.join(output_prefix, 'code'), json_keys[0])}.bin/.idx)")
    existing = [output_prefix_for(output_prefix, k) + ext for k in json_keys for ext in (".bin", ".idx")
                if os.path.exists(output_prefix_for(output_prefix, k) + ext)]
    if existing and not overwrite:
        verb = "exists" if len(existing) == 1 else "exist"
        raise PreprocessError(f"{', '.join(existing)} already {verb}: choose another --output-prefix, delete it, "
                              f"or pass --overwrite to replace it")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", required=True, nargs="+", help="JSONL file(s) (.jsonl/.gz/.zst) or source dir(s)")
    ap.add_argument("--output-prefix", required=True)
    ap.add_argument("--json-keys", nargs="+", default=["text"])
    ap.add_argument("--tokenizer-type", required=True, choices=list(TOKENIZER_TYPES) + ["Llama2Tokenizer"])
    ap.add_argument("--vocab-size", type=int, default=None, help="NullTokenizer: its size; TikTokenizer: the cap")
    ap.add_argument("--tiktoken-pattern", default=None, help="TikTokenizer: v1 or v2 (default v2, as Megatron-LM)")
    ap.add_argument("--tiktoken-num-special-tokens", type=int, default=None,
                    help="TikTokenizer (Megatron-LM .json ranks): special ids before the ranks (default 1000)")
    ap.add_argument("--tokenizer-model", default=None)
    ap.add_argument("--vocab-file", default=None)
    ap.add_argument("--merge-file", default=None)
    ap.add_argument("--append-eod", action="store_true",
                    help="append the end-of-document token after every document that has tokens (as Megatron-LM)")
    ap.add_argument("--tokenizer-hf-no-include-special-tokens", action="store_true",
                    help="do not write the special tokens the tokenizer's own template adds (e.g. Llama's <s> before "
                         "every document); Megatron-LM's flag of the same name. Default: written, as Megatron-LM")
    ap.add_argument("--tokenizer-hf-include-special-tokens", action="store_true",
                    help="write them (the default here; Megatron-LM core_v0.16.1's flag, whose default there is off)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--skip-bad-lines", action="store_true",
                    help="skip (and count) JSONL lines that are not JSON, lack a key or are not UTF-8")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--overwrite", action="store_true", help="replace existing output files")
    ap.add_argument("--fim-rate", type=float, default=0.0,
                    help="document-level FIM (before packing): probability per document; needs the FIM sentinels")
    ap.add_argument("--fim-spm-rate", type=float, default=0.5, help="with --fim-rate: probability of SPM vs PSM")
    ap.add_argument("--seed", type=int, default=1234, help="with --fim-rate: document d uses rng (seed, 0, d)")
    ap.add_argument("--log-interval", type=int, default=None, help="accepted for Megatron compatibility")
    # Megatron preprocess_data.py flags found in copied launch scripts.
    ap.add_argument("--dataset-impl", default="mmap", help="Megatron-DeepSpeed: only 'mmap' (the format we write)")
    ap.add_argument("--keep-sequential-samples", action="store_true",
                    help="accepted for Megatron compatibility: documents are always written in input order")
    ap.add_argument("--split-sentences", action="store_true", help="not supported (see the error it gives)")
    ap.add_argument("--keep-newlines", action="store_true", help="only meaningful with --split-sentences")
    ap.add_argument("--lang", default=None, help="only meaningful with --split-sentences")
    args = ap.parse_args(argv)
    if args.workers < 1 or args.partitions < 1:
        print("error: --workers and --partitions must be >= 1", file=sys.stderr)
        return 2
    if args.dataset_impl != "mmap":
        print(f"error: --dataset-impl {args.dataset_impl}: only 'mmap' is written (Megatron's MMapIndexedDataset "
              f"format, which Megatron-LM, Megatron-DeepSpeed and this trainer read); use --dataset-impl mmap or "
              f"drop the flag", file=sys.stderr)
        return 2
    if args.split_sentences:
        print("error: --split-sentences splits documents into sentences with nltk for BERT-style sentence-pair "
              "data; code is tokenized as whole documents (indentation and newlines are tokens): drop the flag",
              file=sys.stderr)
        return 2
    try:
        check_output_prefix(args.output_prefix, args.json_keys, args.overwrite)
        t = preprocess(args.input, args.output_prefix, args.tokenizer_type, args.tokenizer_model, args.vocab_file,
                       args.merge_file, args.json_keys, args.append_eod, args.workers, args.partitions,
                       args.skip_bad_lines, progress=not args.no_progress, fim_rate=args.fim_rate,
                       fim_spm_rate=args.fim_spm_rate, fim_seed=args.seed,
                       include_special_tokens=not args.tokenizer_hf_no_include_special_tokens,
                       tokenizer_options=dict(vocab_size=args.vocab_size, tiktoken_pattern=args.tiktoken_pattern,
                                              tiktoken_num_special_tokens=args.tiktoken_num_special_tokens))
    except (PreprocessError, CorpusError, TokenizerError, IndexedDatasetError, FileNotFoundError, FIMError,
            DatasetTokenizerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted: nothing written to {args.output_prefix}_* (partial files were removed)", file=sys.stderr)
        return 130
    mb = t["bytes"] / 1e6
    print(f"{t['docs']} documents, {t['tokens']} tokens, {mb:.1f} MB in {t['seconds']:.1f} s "
          f"({t['docs'] / max(t['seconds'], 1e-9):.0f} docs/s, {mb / max(t['seconds'], 1e-9):.2f} MB/s)"
          + (f"; skipped {t['bad']} bad lines/files" if t["bad"] else ""))
    for key in args.json_keys:
        print(f"wrote {output_prefix_for(args.output_prefix, key)}.bin/.idx")
    return 0


if __name__ == "__main__":
    sys.exit(main())
