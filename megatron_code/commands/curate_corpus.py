"""Curate a code corpus: read (JSONL, source trees, notebooks), filter, deduplicate, decontaminate, write JSONL and
Megatron .bin/.idx, on this machine or on SLURM (datatrove executors). See docs/curation.md.

    python tools/curate_corpus.py --input data/raw.jsonl.gz repos/ --output out/ --pipeline study \\
        --tokenizer-type HuggingFaceTokenizer --tokenizer-model tok/ --append-eod --tasks 4 --workers 2

Writes OUT/data/*.jsonl.gz (the kept documents with their provenance), OUT/corpus_text_document.bin/.idx (with a
tokenizer), OUT/report.json (documents and bytes in/out per step and rule; also printed), OUT/decontamination_hits.jsonl
(with a decontaminate step). Re-running the same command resumes an interrupted run.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", required=True, nargs="+", help="JSONL files (.jsonl/.gz/.zst), notebooks, directories "
                                                               "of repositories")
    ap.add_argument("--output", required=True, help="output directory (new, empty, or a run to resume)")
    ap.add_argument("--pipeline", required=True, help="study | palm | phi1 | jupyt5 | a pipeline YAML file")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override an option, e.g. quality.max_line_length=500, near_dedup.threshold=0.85, "
                         "license.keep_unknown=true, exact_dedup=false (repeatable)")
    ap.add_argument("--executor", choices=["local", "slurm"], default="local")
    ap.add_argument("--tasks", type=int, default=1, help="datatrove tasks (input shards; output shards)")
    ap.add_argument("--workers", type=int, default=1, help="local executor: tasks run at once")
    ap.add_argument("--tokenizer-type", default=None,
                    choices=["GPT2BPETokenizer", "HuggingFaceTokenizer", "SentencePieceTokenizer"],
                    help="also write Megatron .bin/.idx (as tools/preprocess_data.py would)")
    ap.add_argument("--tokenizer-model", default=None)
    ap.add_argument("--vocab-file", default=None)
    ap.add_argument("--merge-file", default=None)
    ap.add_argument("--append-eod", action="store_true", help="append <|endoftext|> after every document")
    ap.add_argument("--output-prefix", default="corpus", help="bins: OUT/PREFIX_text_document.bin/.idx")
    ap.add_argument("--slurm-partition", default=None, help="default: the cluster's default partition")
    ap.add_argument("--slurm-time", default="01:00:00")
    ap.add_argument("--slurm-mem-per-cpu", default="2G", help="sbatch --mem-per-cpu for every stage's jobs")
    ap.add_argument("--overwrite", action="store_true", help="replace a previous run with another pipeline in --output")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    args = ap.parse_args(argv)

    from megatron_code.curation.pipeline import CurationError, apply_overrides, curate, format_report, load_pipeline
    from megatron_code.data.tokenizer import TokenizerError, build_tokenizer

    tokenizer = None
    try:
        cfg = apply_overrides(load_pipeline(args.pipeline), args.set)
        if args.tokenizer_type:
            tokenizer = dict(tokenizer_type=args.tokenizer_type, tokenizer_model=args.tokenizer_model,
                             vocab_file=args.vocab_file, merge_file=args.merge_file, append_eod=args.append_eod)
            build_tokenizer(args.tokenizer_type, args.tokenizer_model, args.vocab_file, args.merge_file)
        elif args.tokenizer_model or args.vocab_file or args.append_eod:
            raise CurationError("--tokenizer-model/--vocab-file/--append-eod need --tokenizer-type")
        report = curate(args.input, args.output, cfg, tasks=args.tasks, workers=args.workers,
                        executor=args.executor, tokenizer=tokenizer, prefix=args.output_prefix,
                        slurm={"partition": args.slurm_partition, "time": args.slurm_time,
                               "mem_per_cpu": args.slurm_mem_per_cpu},
                        overwrite=args.overwrite, progress=not args.no_progress)
    except (CurationError, TokenizerError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted: re-run the same command to resume (completed tasks are kept in {args.output}/logs)",
              file=sys.stderr)
        return 130
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
