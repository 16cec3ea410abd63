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
