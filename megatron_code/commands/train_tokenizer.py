"""Train a code tokenizer (byte-level BPE by default) with the project's special tokens registered up front.

    python tools/train_tokenizer.py --input data/stdlib/train.jsonl --vocab-size 8192 --output-dir tok/
    python tools/train_tokenizer.py --input src/ --kind sentencepiece-unigram --vocab-size 8000 --output-dir sp/

Inputs: .jsonl(.gz/.zst) files (``--json-key``), source files, or directories of source files. The result loads
with ``--tokenizer-type HuggingFaceTokenizer --tokenizer-model DIR`` (BPE) or ``SentencePieceTokenizer
--tokenizer-model DIR/tokenizer.model`` (SentencePiece). SentencePiece unigram piece scores are rounded to
multiples of 1/8 so the Hugging Face export encodes exactly like SentencePiece (docs/export.md).
"""

from __future__ import annotations

import argparse
import os
import sys

from megatron_code.data.corpus import CorpusError, iter_jsonl, iter_source_tree
from megatron_code.data.tokenizer import TokenizerError, train_code_tokenizer


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "megatron_code_tokenizer.json")


def iter_input_texts(inputs, json_key, skip_bad_lines, limit_bytes=None):
    """Texts from every input; stops after ``limit_bytes`` characters if given."""
    seen = 0
    for path in inputs:
        if os.path.isdir(path):
            docs = (d["text"] for d in iter_source_tree(path, skip_bad_files=skip_bad_lines))
        elif ".jsonl" in os.path.basename(path):
            docs = (d[json_key] for d in iter_jsonl(path, (json_key,), skip_bad_lines=skip_bad_lines))
        elif os.path.isfile(path):
            with open(path, encoding="utf-8", newline="") as f:
                docs = iter([f.read()])
        else:
            raise FileNotFoundError(f"input not found: {path}")
        for text in docs:
            yield text
            seen += len(text)
            if limit_bytes and seen >= limit_bytes:
                return


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", nargs="+", required=True)
    ap.add_argument("--vocab-size", type=int, required=True)
    ap.add_argument("--output-dir", required=True)
    ap.add_argument("--kind", default="bpe", choices=["bpe", "wordpiece", "sentencepiece-bpe", "sentencepiece-unigram"])
    ap.add_argument("--json-key", default="text")
    ap.add_argument("--max-chars", type=int, default=None, help="train on at most this many characters")
    ap.add_argument("--skip-bad-lines", action="store_true")
    ap.add_argument("--overwrite", action="store_true", help="replace a tokenizer already in --output-dir")
    args = ap.parse_args(argv)
    existing = [f for f in TOKENIZER_FILES if os.path.exists(os.path.join(args.output_dir, f))]
    if existing and not args.overwrite:
        # Data tokenized and models trained with the old tokenizer would silently stop matching it.
        print(f"error: {args.output_dir} already holds a tokenizer ({', '.join(existing)}): choose another "
              f"--output-dir, or pass --overwrite to replace it (data and checkpoints made with it will no longer "
              f"match)", file=sys.stderr)
        return 1
    try:
        from tqdm import tqdm

        texts = tqdm(iter_input_texts(args.input, args.json_key, args.skip_bad_lines, args.max_chars),
                     unit=" docs", desc="reading + training", mininterval=0.5)
        tok = train_code_tokenizer(texts, args.vocab_size, args.output_dir, kind=args.kind)
    except (TokenizerError, CorpusError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{tok.tokenizer_type}: vocab {tok.vocab_size}, specials {tok.special_tokens}, "
          f"fingerprint {tok.fingerprint()[:16]} -> {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
