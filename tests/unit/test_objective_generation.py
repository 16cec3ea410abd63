"""Objective-aware generation: a checkpoint records its objective, and generation does the right thing without a
flag. Spy test of the issue: a tiny MIM checkpoint (a real DeepSpeed checkpoint written by the same code the
trainer uses) scored by tools/evaluate_humaneval.py feeds every prompt to the model as <l2r> + prompt; a causal
one feeds the prompt alone; tools/generate.py does the same."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

from megatron_code.config.model import ModelConfig
from megatron_code.model import GPT

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROBLEMS = [{"task_id": "t/0", "prompt": "def add(a, b):\n", "entry_point": "add",
             "canonical_solution": "    return a + b\n", "test": "def check(f):\n    assert f(1, 2) == 3\n"}]


def _tool(name: str):
    return importlib.import_module(f"megatron_code.commands.{name}")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from megatron_code.data.tokenizer import train_code_tokenizer

    texts = ["def add(a, b):\n    return a + b\n", "class Point:\n    x: int = 1\n", "print('hi')\n"] * 30
    return train_code_tokenizer(texts, 300, str(tmp_path_factory.mktemp("tok")))


def make_checkpoint(tok, objective: str, save_dir: str) -> str:
    from megatron_code.convert.hf import _save_with_engine, build_job

    cfg = ModelConfig(num_layers=1, hidden_size=32, num_attention_heads=2, vocab_size=tok.vocab_size,
                      max_position_embeddings=128)
    model = GPT(cfg)
    model.init_weights(torch.Generator().manual_seed(0))
    job = build_job(cfg)
    job.objective.objective = objective
    job.data.seq_length = 64
    job.validate()
    return _save_with_engine(job, cfg, model.state_dict(), tok, save_dir)


@pytest.fixture()
def spy(monkeypatch):
    """First input ids of every row of every prompt forward (the first call of a generation group)."""
    seen: list[list[int]] = []
    forward = GPT.forward

    def spying(self, input_ids, *args, **kwargs):
        if kwargs.get("cache") is None or kwargs["cache"].length == 0:
            seen.extend(input_ids.tolist())
        return forward(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(GPT, "forward", spying)
    return seen


@pytest.mark.parametrize("objective", ["mim", "causal"])
def test_evaluate_humaneval_feeds_the_objectives_lead(objective, tok, spy, tmp_path):
    ckpt = make_checkpoint(tok, objective, str(tmp_path / "ckpt"))
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    tool = _tool("evaluate_humaneval")
    rc = tool.main(["--load", ckpt, "--problem-file", str(problems), "--n-samples", "1", "--temperature", "0",
                    "--max-new-tokens", "4", "--output", str(tmp_path / "out"), "--no-progress", "--workers", "1"])
    assert rc == 0
    prompt_ids = tok.encode(PROBLEMS[0]["prompt"])
    lead = [tok.special_tokens["<l2r>"]] if objective == "mim" else []
    # one prompt, so no padding: each prompt forward's row is exactly lead + prompt
    assert spy and all(row == lead + prompt_ids for row in spy), spy


def test_generate_tool_feeds_l2r_to_a_mim_checkpoint(tok, spy, tmp_path, capsys):
    ckpt = make_checkpoint(tok, "mim", str(tmp_path / "ckpt"))
    tool = _tool("generate")
    assert tool.main(["--load", ckpt, "--prompt", "def f(", "--max-new-tokens", "3"]) == 0
    want = [tok.special_tokens["<l2r>"]] + tok.encode("def f(")
    assert spy == [want]
    spy.clear()
    assert tool.main(["--load", ckpt, "--prompt", "def f(", "--max-new-tokens", "3", "--contrastive-alpha", "0.5"]) \
        == 0
    assert spy[0] == want  # the prompt forward of contrastive search (candidate forwards follow on the cache)
    capsys.readouterr()


def test_a_mim_checkpoint_whose_tokenizer_lacks_l2r_is_refused(tmp_path):
    from megatron_code.inference.generate import GenerationError, generate

    model = GPT(ModelConfig(num_layers=1, hidden_size=32, num_attention_heads=2, vocab_size=50))
    model.objective = "mim"

    class NoL2R:
        special_tokens = {"<|endoftext|>": 0}
        eod = 0

        def encode(self, text):
            return [1, 2]

    with pytest.raises(GenerationError, match="no <l2r> token"):
        generate(model, NoL2R(), ["x"], max_new_tokens=1)


# ------------------------------------------------------------------------------- contrastive decoding and the sweep
def test_contrastive_decoding_and_the_temperature_sweep_table(tok, tmp_path, capsys):
    ckpt = make_checkpoint(tok, "causal", str(tmp_path / "ckpt"))
    problems = tmp_path / "problems.jsonl"
    two = PROBLEMS + [{**PROBLEMS[0], "task_id": "t/1", "prompt": "def add(a, b):\n    return a + b\n"}]
    problems.write_text("".join(json.dumps(p) + "\n" for p in two))
    tool = _tool("evaluate_humaneval")
    base = ["--load", ckpt, "--problem-file", str(problems), "--n-samples", "3", "--max-new-tokens", "6",
            "--no-progress", "--workers", "1", "--ks", "1", "2", "--decoding", "contrastive"]
    assert tool.main(base + ["--alpha", "0.4", "--temperature", "0.7", "--output", str(tmp_path / "one")]) == 0
    samples = [json.loads(x) for x in open(tmp_path / "one" / "samples.jsonl")]
    assert len(samples) == 6
    capsys.readouterr()
    assert tool.main(base + ["--sweep-temperatures", "0.2", "0.8", "--sweep-alphas", "0.1", "0.4",
                             "--output", str(tmp_path / "sweep")]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("temperature=")]
    assert len(rows) == 4 and "best per k" in out
    assert "pass@1: " in out and "pass@2: " in out and "pass@1: best at temperature=" in out
    assert sorted(os.listdir(tmp_path / "sweep")) == ["temperature0.2_alpha0.1", "temperature0.2_alpha0.4",
                                                      "temperature0.8_alpha0.1", "temperature0.8_alpha0.4"]
    # the second problem's prompt is already a solution: whatever a sample adds before a stop, most pass
    summary = json.load(open(tmp_path / "sweep" / "temperature0.2_alpha0.1" / "samples.jsonl_summary.json"))
    assert summary["per_task"]["t/1"]["n"] == 3


def test_sweep_report_picks_the_best_setting_per_k():
    from megatron_code.evaluation.humaneval import EvaluationReport, SweepReport

    def report(p1, p10):
        return EvaluationReport(samples=[], per_task={}, pass_at_k={"pass@1": p1, "pass@10": p10}, fates={},
                                timeout=1.0, workers=1)

    sw = SweepReport([{"temperature": 0.2}, {"temperature": 0.8}], [report(0.30, 0.40), report(0.20, 0.55)])
    assert sw.best() == {"pass@1": (0.30, {"temperature": 0.2}), "pass@10": (0.55, {"temperature": 0.8})}
    assert "best per k" in sw.table() and "0.5500" in sw.table()
