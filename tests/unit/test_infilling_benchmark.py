"""The infilling benchmark: span invariants and determinism, scoring rules, and the oracle / empty infillers
scored end to end (HumanEval programs executed in the sandbox)."""

from __future__ import annotations

import json

import pytest

from megatron_code.evaluation.humaneval import read_problems
from megatron_code.evaluation.infilling import (InfillingError, InfillTask, empty_infiller, evaluate_infilling,
                                                edit_similarity, exact_match, humaneval_tasks, oracle_infiller, postprocess,
                                                read_tasks, score_infills, stdlib_tasks, write_tasks)

SUBSET = ("HumanEval/0", "HumanEval/3", "HumanEval/4", "HumanEval/12", "HumanEval/20")


@pytest.fixture(scope="module")
def problems():
    return read_problems()


@pytest.fixture(scope="module")
def subset(problems):
    return {k: problems[k] for k in SUBSET}


def test_humaneval_spans_invariants_and_determinism(problems):
    tasks = humaneval_tasks(problems, seed=3, single_per_problem=2, multi_per_problem=1)
    assert tasks == humaneval_tasks(problems, seed=3, single_per_problem=2, multi_per_problem=1)
    assert tasks != humaneval_tasks(problems, seed=4, single_per_problem=2, multi_per_problem=1)
    assert len({t.task_id for t in tasks}) == len(tasks)
    singles = [t for t in tasks if t.kind == "single-line"]
    multis = [t for t in tasks if t.kind == "multi-line"]
    nonblank = {k: sum(1 for x in p["canonical_solution"].splitlines() if x.strip()) for k, p in problems.items()}
    assert len(singles) == sum(min(2, n) for n in nonblank.values())
    assert len(multis) == sum(1 for p in problems.values() if len(p["canonical_solution"].splitlines()) >= 2)
    for t in tasks:
        p = problems[t.problem_id]
        assert t.original == p["prompt"] + p["canonical_solution"]
        assert t.prefix.startswith(p["prompt"])  # the span lies inside the solution
        assert t.middle.strip() and (t.prefix == "" or t.prefix.endswith("\n"))
        assert len(t.middle.splitlines()) == (1 if t.kind == "single-line" else t.num_lines)
    assert all(2 <= t.num_lines <= 4 for t in multis)
    # a problem's spans do not depend on which other problems are in the set
    alone = humaneval_tasks({"HumanEval/0": problems["HumanEval/0"]}, seed=3, single_per_problem=2,
                            multi_per_problem=1)
    assert alone == [t for t in tasks if t.problem_id == "HumanEval/0"] and len(alone) == 3


def test_stdlib_spans(tmp_path):
    text = "".join(f"line_{i} = {i}\n" if i % 5 else "\n" for i in range(120)) + "x" * 300 + "\n"
    corpus = tmp_path / "test.jsonl"
    corpus.write_text(json.dumps({"text": text, "path": "m.py"}) + "\n" + json.dumps({"text": "a\n", "path": "b.py"})
                      + "\n")
    tasks = stdlib_tasks(str(corpus), seed=0, single_per_file=5, multi_per_file=3, context_lines=10)
    assert tasks == stdlib_tasks(str(corpus), seed=0, single_per_file=5, multi_per_file=3, context_lines=10)
    assert sum(t.kind == "single-line" for t in tasks) == 6 and sum(t.kind == "multi-line" for t in tasks) == 3
    for t in tasks:
        assert t.original in text + "a\n" and t.middle.strip()
        assert "x" * 300 not in t.middle  # over-long lines are never masked
        assert len(t.prefix.splitlines()) <= 10 and len(t.suffix.splitlines()) <= 10
    with pytest.raises(InfillingError, match="prepare_stdlib_corpus"):
        stdlib_tasks(str(tmp_path / "missing.jsonl"))


def test_postprocess_and_exact_match():
    single = InfillTask("t", "single-line", "a\n", "    return x\n", "b\n")
    assert postprocess("    return x\n    more\n", single) == "    return x\n"
    assert postprocess("    return x", single) == "    return x\n"
    assert exact_match("    return x  \n\n", "    return x\n")
    assert not exact_match("return x\n", "    return x\n")  # indentation matters
    assert edit_similarity("    return x\n", "    return x") == 1.0 and edit_similarity("", "abc") == 0.0
    assert 0.5 < edit_similarity("    return y\n", "    return x\n") < 1.0


def test_oracle_scores_one_and_empty_scores_zero(subset, tmp_path):
    tasks = humaneval_tasks(subset, seed=0)
    assert len(tasks) == 2 * len(SUBSET)
    oracle = evaluate_infilling(tasks, oracle_infiller, problems=subset, timeout=5.0)
    for kind in ("single-line", "multi-line", "all"):
        assert oracle.metrics[kind]["exact_match"] == 1.0 and oracle.metrics[kind]["edit_similarity"] == 1.0
        assert oracle.metrics[kind]["pass_rate"] == 1.0, oracle.records
    empty = evaluate_infilling(tasks, empty_infiller, problems=subset, timeout=5.0)
    assert empty.metrics["all"]["exact_match"] == 0.0
    assert empty.metrics["all"]["pass_rate"] == 0.0, [r for r in empty.records if r["passed"]]
    # a wrong line fails the tests, and statuses of infill results are counted
    wrong = score_infills(tasks[:2], ["    return None\n", "    pass\n"], problems=subset,
                          statuses=["met", "budget"])
    assert wrong.metrics["all"]["pass_rate"] == 0.0 and wrong.statuses == {"met": 1, "budget": 1}
    path = tmp_path / "tasks.jsonl"
    write_tasks(str(path), tasks)
    assert read_tasks(str(path)) == tasks
    assert "single-line" in oracle.summary_table()


# ------------------------------------------------------------------- user-supplied HumanEval-infilling files
def _infilling_records(problems, pid):
    """Records in the FIM paper's HumanEval-infilling format, cut from a problem's canonical solution."""
    p = problems[pid]
    lines = p["canonical_solution"].splitlines(keepends=True)
    code = p["canonical_solution"]

    def rec(bench, name, prefix_sol, middle, suffix):
        return {"task_id": f"{bench}/{pid}/{name}", "entry_point": p["entry_point"], "prompt": p["prompt"] + prefix_sol,
                "suffix": suffix, "canonical_solution": middle, "test": p["test"]}
    cut = len(code) // 3
    return [rec("SingleLineInfilling", "L0", "", lines[0], "".join(lines[1:])),
            rec("MultiLineInfilling", "L0_L1", "", "".join(lines[:2]), "".join(lines[2:])),
            rec("RandomSpanInfilling", "0", code[:cut], code[cut:2 * cut], code[2 * cut:])]


def test_humaneval_infilling_files_load_and_score(problems, tmp_path):
    import gzip
    import subprocess
    import sys

    from megatron_code.evaluation.infilling import read_infilling_file

    # HumanEval/38's test calls encode_cyclic from the problem's prompt: the reference prelude must provide it
    records = _infilling_records(problems, "HumanEval/0") + _infilling_records(problems, "HumanEval/38")
    plain, packed = tmp_path / "mixed.jsonl", tmp_path / "mixed.jsonl.gz"
    plain.write_text("".join(json.dumps(r) + "\n" for r in records))
    with gzip.open(packed, "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
    tasks, probs = read_infilling_file(str(packed))
    assert (tasks, probs) == read_infilling_file(str(plain))
    assert [t.kind for t in tasks] == ["single-line", "multi-line", "random-span"] * 2
    assert all(t.prefix + t.middle + t.suffix == r["prompt"] + r["canonical_solution"] + r["suffix"]
               for t, r in zip(tasks, records))
    oracle = evaluate_infilling(tasks, oracle_infiller, problems=probs, timeout=5.0)
    for kind in ("single-line", "multi-line", "random-span", "all"):
        assert oracle.metrics[kind]["exact_match"] == 1.0 and oracle.metrics[kind]["pass_rate"] == 1.0, \
            oracle.records
    empty = evaluate_infilling(tasks, empty_infiller, problems=probs, timeout=5.0)
    assert empty.metrics["all"]["pass_rate"] == 0.0, [r for r in empty.records if r["passed"]]
    assert postprocess("ab\ncd", tasks[2]) == "ab\ncd"  # a random span is taken as predicted

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**records[0], "task_id": "Other/HumanEval/0/L0"}) + "\n")
    with pytest.raises(InfillingError, match="does not start with"):
        read_infilling_file(str(bad))
    bad.write_text(json.dumps({k: v for k, v in records[0].items() if k != "suffix"}) + "\n")
    with pytest.raises(InfillingError, match="lacks \\['suffix'\\]"):
        read_infilling_file(str(bad))

    # the command line: --benchmark file, one line on stderr for a user mistake
    import os

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root)
    r = subprocess.run([sys.executable, "tools/evaluate_infilling.py", "--benchmark", "file", "--infilling-file",
                        str(packed), "--oracle", "--no-progress"], cwd=root, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert "random-span" in r.stdout and "6 tasks" in r.stdout
    r = subprocess.run([sys.executable, "tools/evaluate_infilling.py", "--benchmark", "file", "--oracle"], cwd=root,
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "--infilling-file" in r.stderr and "Traceback" not in r.stderr
