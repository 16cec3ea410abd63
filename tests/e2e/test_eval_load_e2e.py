"""End to end with a real (tiny, 2-step) checkpoint: `tools/evaluate_humaneval.py --load` generates with
megatron_code.inference, executes in the sandbox and scores; `tools/generate_docstrings.py --load` explains a
function. The model is untrained, so only the plumbing and the file formats are checked, not the scores."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from megatron_code.evaluation.humaneval import read_problems, write_jsonl

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]


def _run(args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, **kw)


def test_evaluate_humaneval_load(tiny_checkpoint, tmp_path):
    problems = read_problems()
    subset = [problems[t] for t in ("HumanEval/0", "HumanEval/4", "HumanEval/7")]
    problem_file = tmp_path / "problems.jsonl"
    write_jsonl(str(problem_file), subset)
    out = tmp_path / "out"
    r = _run(["tools/evaluate_humaneval.py", "--load", tiny_checkpoint,
              "--problem-file", str(problem_file), "--n-samples", "2", "--temperature", "0.8",
              "--max-new-tokens", "24", "--output", str(out), "--workers", "2", "--timeout", "2",
              "--no-progress"], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"^pass@1: [01]\.\d{4}$", r.stdout, re.M), r.stdout
    samples = [json.loads(x) for x in open(out / "samples.jsonl")]
    assert [s["task_id"] for s in samples] == [p["task_id"] for p in subset for _ in range(2)]
    for s in samples:  # truncated at every HumanEval stop sequence
        assert not any(stop in s["completion"] for stop in ("\nclass", "\ndef", "\n#", "\nif", "\nprint"))
    results = [json.loads(x) for x in open(out / "samples.jsonl_results.jsonl")]
    assert len(results) == 6 and all(r["fate"] in ("passed", "failed", "timed_out", "crashed") for r in results)
    summary = json.load(open(out / "samples.jsonl_summary.json"))
    assert summary["num_samples"] == 6 and set(summary["pass_at_k"]) == {"pass@1"}


def test_generate_docstrings_load(tiny_checkpoint, tmp_path):
    code = tmp_path / "code.py"
    code.write_text("def add(a, b):\n    return a + b\n\n\ndef neg(a):\n    return -a\n")
    out = tmp_path / "doc.jsonl"
    r = _run(["tools/generate_docstrings.py", "--load", tiny_checkpoint, "--input", str(code),
              "--max-new-tokens", "12", "--output", str(out)], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("add (line 1): The previous function")
    records = [json.loads(x) for x in open(out)]
    assert records[0]["prompt"].endswith('\n"""Code explanation: the previous function')  # column 0, Fig. 5.3
    assert '"""' not in records[0]["completion"]
