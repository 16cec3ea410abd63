"""tools/evaluate_humaneval.py as a user runs it: --samples-file output format, results file, user errors, and
the --load wiring to megatron_code.inference.generate (with the model replaced by a fake)."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

from megatron_code.evaluation.humaneval import write_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(ROOT, "tools", "evaluate_humaneval.py")

PROBLEMS = [
    {"task_id": "Tiny/0", "prompt": "def add(a, b):\n", "entry_point": "add", "canonical_solution": "",
     "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n"},
    {"task_id": "Tiny/1", "prompt": "def neg(a):\n", "entry_point": "neg", "canonical_solution": "",
     "test": "def check(candidate):\n    assert candidate(2) == -2\n"},
]


def run_tool(*args):
    return subprocess.run([sys.executable, TOOL, "--no-progress", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_samples_file_prints_pass_at_k_lines_and_writes_results(tmp_path):
    problem_file = tmp_path / "problems.jsonl"
    write_jsonl(str(problem_file), PROBLEMS)
    samples = [{"task_id": "Tiny/0", "completion": "    return a + b\n"}] * 7 + \
              [{"task_id": "Tiny/0", "completion": "    return a - b\n"}] * 3 + \
              [{"task_id": "Tiny/1", "completion": "    return -a\n"}] * 2 + \
              [{"task_id": "Tiny/1", "completion": "    return a\n"}] * 8
    sample_file = tmp_path / "samples.jsonl"
    write_jsonl(str(sample_file), samples)
    proc = run_tool("--samples-file", str(sample_file), "--problem-file", str(problem_file), "--workers", "2",
                    "--timeout", "2")
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("pass@")]
    assert all(re.fullmatch(r"pass@\d+: [01]\.\d{4}", ln) for ln in lines), lines
    values = dict(ln.split(": ") for ln in lines)
    assert set(values) == {"pass@1", "pass@10"}  # pass@100 needs 100 samples per problem
    assert float(values["pass@1"]) == pytest.approx((0.7 + 0.2) / 2, abs=1e-4)
    assert float(values["pass@10"]) == 1.0
    results = [json.loads(x) for x in open(f"{sample_file}_results.jsonl")]
    assert len(results) == 20 and sum(r["passed"] for r in results) == 9
    assert {"task_id", "completion", "result", "passed", "fate"} <= set(results[0])


def test_user_errors_are_one_line(tmp_path):
    proc = run_tool("--samples-file", str(tmp_path / "nope.jsonl"))
    assert proc.returncode == 1 and proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "HumanEval/0", "completion": ""}\n')
    proc = run_tool("--samples-file", str(bad))
    assert proc.returncode == 1 and "--ignore-incomplete" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_tool("--load", str(tmp_path / "no_ckpt"))
    assert proc.returncode == 2 and "--output" in proc.stderr


def test_load_path_uses_inference_generate(tmp_path, monkeypatch, capsys):
    """--load -> model_generate_fn -> megatron_code.inference.generate.{load_for_inference, generate}; the model is
    faked so only the wiring (arguments, stop sequences, output files) is under test."""
    inference = importlib.import_module("megatron_code.inference.generate")  # the package re-exports a function of that name

    calls = {}

    def fake_load(ckpt_dir):
        calls["ckpt"] = ckpt_dir
        return "model", "tokenizer"

    def fake_generate(model, tokenizer, prompts, **kw):
        calls.update(kw)
        answer = {"def add(a, b):\n": "    return a + b\n", "def neg(a):\n": "    return a\n"}
        return [[answer[p] + "\ndef junk(): pass"] * kw["num_samples"] for p in prompts]

    monkeypatch.setattr(inference, "load_for_inference", fake_load)
    monkeypatch.setattr(inference, "generate", fake_generate)
    from megatron_code.commands import evaluate_humaneval as tool
    problem_file = tmp_path / "problems.jsonl"
    write_jsonl(str(problem_file), PROBLEMS)
    out = tmp_path / "out"
    rc = tool.main(["--load", "CKPT", "--problem-file", str(problem_file), "--n-samples", "3", "--temperature",
                    "0.8", "--output", str(out), "--no-progress"])
    assert rc == 0
    assert calls["ckpt"] == "CKPT" and calls["num_samples"] == 3 and calls["temperature"] == 0.8
    assert calls["stop"] == ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]
    assert "pass@1: 0.5000" in capsys.readouterr().out
    samples = [json.loads(x) for x in open(out / "samples.jsonl")]
    assert len(samples) == 6 and samples[0]["completion"] == "    return a + b\n"
    assert os.path.exists(out / "samples.jsonl_results.jsonl") and os.path.exists(out / "samples.jsonl_summary.json")
