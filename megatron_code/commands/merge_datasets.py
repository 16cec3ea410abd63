"""Concatenate indexed datasets (``.bin`` back to back, document bounds shifted); dtypes must match.

    python tools/merge_datasets.py --input data/a_text_document data/b_text_document --output-prefix data/ab
    python tools/merge_datasets.py --input data/parts/ --output-prefix data/all   # every prefix in a directory
"""

from __future__ import annotations

import argparse
import os
import sys

from megatron_code.data.indexed import (IndexedDataset, IndexedDatasetError, data_file_path,
                                        index_file_path, merge_datasets)


def expand(inputs):
    """Prefixes from the arguments; a directory contributes every ``*.idx`` in it, in sorted order."""
    out = []
    for p in inputs:
        if os.path.isdir(p):
            out += sorted(os.path.join(p, f[:-4]) for f in os.listdir(p) if f.endswith(".idx"))
        else:
            out.append(p[:-4] if p.endswith((".bin", ".idx")) else p)
    return out


def check_output(prefixes, output_prefix: str, overwrite: bool) -> None:
    """The output must not be one of the inputs (it would be destroyed) nor, without --overwrite, exist."""
    if output_prefix.endswith((".bin", ".idx")):
        raise IndexedDatasetError(f"--output-prefix {output_prefix}: the tool appends .bin/.idx itself; pass "
                                  f"--output-prefix {output_prefix[:-4]}")
    out = os.path.abspath(output_prefix)
    if any(os.path.abspath(p) == out for p in prefixes):
        raise IndexedDatasetError(f"--output-prefix {output_prefix} is also an input: merging would replace it; "
                                  f"choose another --output-prefix")
    existing = [p for p in (data_file_path(output_prefix), index_file_path(output_prefix)) if os.path.exists(p)]
    if existing and not overwrite:
        raise IndexedDatasetError(f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}: choose "
                                  f"another --output-prefix, delete it, or pass --overwrite to replace it")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", nargs="+", required=True, help="dataset prefixes or directories of them")
    ap.add_argument("--output-prefix", required=True)
    ap.add_argument("--overwrite", action="store_true", help="replace an existing output dataset")
    args = ap.parse_args(argv)
    try:
        prefixes = expand(args.input)
        check_output(prefixes, args.output_prefix, args.overwrite)
        merge_datasets(prefixes, args.output_prefix)
        merged = IndexedDataset(args.output_prefix)
    except (IndexedDatasetError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"merged {len(prefixes)} datasets -> {args.output_prefix}: {merged.num_documents} documents, "
          f"{merged.num_tokens} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
