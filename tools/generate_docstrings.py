#!/usr/bin/env python
"""Generate code explanations (docstrings) with the code-commenting prompt of the "democratization" study of code
models: after a function's source, append

    \\n    \"\"\"Code explanation: the previous function

and let the model complete until the closing triple quote.

    python tools/generate_docstrings.py --load CKPT_DIR --input file.py
    python tools/generate_docstrings.py --load CKPT_DIR --input file.py --function parse --output out.jsonl

Every function and method of --input (or only those named by --function) gets one prompt. Methods use their own
body indentation instead of four spaces, so the prompt stays valid Python. Prints `name (line N): explanation`
per function; --output also writes JSONL records (name, qualname, lineno, prompt, completion, explanation).
Generation stops at the closing quotes (a stop string) or after --max-new-tokens.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROMPT_OPENING = '"""Code explanation: the previous function'
CLOSING = '"""'

GenerateFn = Callable[[list[str], int], list[list[str]]]


class DocstringError(ValueError):
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
    """The study's prompt: the function, a newline, then the opening of the explanation at body indentation
    (four spaces for a top-level function)."""
    return fn.source.rstrip() + "\n" + " " * (fn.indent + 4) + PROMPT_OPENING


def extract_explanation(completion: str) -> str:
    """The completion up to the closing triple quote (if any), on one line, prefixed with "The previous function"
    so it reads as a sentence."""
    cut = completion.find(CLOSING)
    body = completion if cut < 0 else completion[:cut]
    text = " ".join(body.split())  # the model may wrap lines inside the docstring: one line of prose
    sep = "" if not text or text[0] in ",.;:'" else " "
    return f"The previous function{sep}{text}"


def explain_functions(functions: Sequence[FunctionSource], generate_fn: GenerateFn) -> list[dict]:
    """One explanation per function through `generate_fn(prompts, n) -> completions[prompt][sample]`."""
    prompts = [build_prompt(f) for f in functions]
    outputs = generate_fn(prompts, 1)
    if len(outputs) != len(prompts) or any(len(o) != 1 for o in outputs):
        raise DocstringError(f"generate_fn must return one completion per prompt, got {[len(o) for o in outputs]}")
    records = []
    for fn, prompt, (completion,) in zip(functions, prompts, outputs):
        records.append({"name": fn.name, "qualname": fn.qualname, "lineno": fn.lineno, "prompt": prompt,
                        "completion": completion, "explanation": extract_explanation(completion)})
    return records


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", required=True, help="checkpoint directory")
    p.add_argument("--input", required=True, help="Python file whose functions to explain")
    p.add_argument("--function", nargs="*", default=None, help="only these functions (name or qualname)")
    p.add_argument("--output", default=None, help="also write JSONL records here")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if not os.path.isfile(args.input):
            raise DocstringError(f"{args.input}: no such file; pass --input path/to/file.py")
        with open(args.input, encoding="utf-8") as f:
            functions = find_functions(f.read(), args.function, filename=args.input)
        from megatron_code.evaluation.humaneval import model_generate_fn

        generate_fn = model_generate_fn(args.load, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                        top_k=args.top_k, top_p=args.top_p, seed=args.seed, stop=[CLOSING])
        records = explain_functions(functions, generate_fn)
    except (ValueError, FileNotFoundError) as exc:  # user errors: input file, checkpoint, settings
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for r in records:
        print(f"{r['qualname']} (line {r['lineno']}): {r['explanation']}")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
