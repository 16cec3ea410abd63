"""Write the embedded default corpus: this machine's Python standard library as train/valid/test JSONL.

    python tools/prepare_stdlib_corpus.py --output-dir data/stdlib
"""

from __future__ import annotations

import argparse
import os
import sys

from megatron_code.data.corpus import CorpusError, build_stdlib_corpus


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output-dir", required=True)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--valid-fraction", type=float, default=0.02)
    ap.add_argument("--test-fraction", type=float, default=0.02)
    ap.add_argument("--overwrite", action="store_true", help="replace train/valid/test.jsonl already in --output-dir")
    args = ap.parse_args(argv)
    existing = [n for n in ("train.jsonl", "valid.jsonl", "test.jsonl")
                if os.path.exists(os.path.join(args.output_dir, n))]
    if existing and not args.overwrite:
        print(f"error: {args.output_dir} already holds {', '.join(existing)}: data and tokenizers made from them would "
              f"no longer match; choose another --output-dir or pass --overwrite", file=sys.stderr)
        return 1
    try:
        paths = build_stdlib_corpus(args.output_dir, seed=args.seed, valid_fraction=args.valid_fraction,
                                    test_fraction=args.test_fraction)
    except (CorpusError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for split, path in paths.items():
        with open(path, "rb") as f:
            n = sum(1 for _ in f)
        print(f"{split}: {n} files -> {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
