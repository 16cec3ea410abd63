"""End to end: train a tokenizer, tokenize a few stdlib files, train the tiny preset for two steps with a save,
then `tools/generate.py --load` prints exactly the completion the library computes (greedy, sampled with stops,
contrastive), and a bad --load is one line on stderr."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMPT = "def f(x):\n"

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]


def _run(args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, **kw)


def test_cli_prints_only_the_completion(tiny_checkpoint, capsys, monkeypatch):
    from megatron_code.inference import contrastive_search, generate, load_for_inference
    from megatron_code.inference.stopping import HUMANEVAL_STOPS

    from megatron_code.commands import generate as cli

    torch.set_num_threads(1)
    model, tok = load_for_inference(tiny_checkpoint)
    assert not model.training and tok.vocab_size <= model.cfg.padded_vocab_size

    # 1. a real subprocess: stdout is the greedy completion, byte for byte; logs went to stderr
    r = _run(["tools/generate.py", "--load", tiny_checkpoint, "--prompt", PROMPT, "--max-new-tokens", "12",
              "--temperature", "0"])
    assert r.returncode == 0, r.stderr
    expect = generate(model, tok, [PROMPT], max_new_tokens=12)[0][0]
    assert r.stdout == expect and len(expect) > 0
    assert "loaded" in r.stderr

    # 2. sampling with n samples and HumanEval stops, in process
    assert cli.main(["--load", tiny_checkpoint, "--prompt", PROMPT, "--max-new-tokens", "16",
                     "--temperature", "1.0", "--top-p", "0.95", "--seed", "3", "--num-samples", "2",
                     "--stop", "humaneval", "--separator", "@@"]) == 0
    samples = generate(model, tok, [PROMPT], max_new_tokens=16, temperature=1.0, top_p=0.95, seed=3,
                       num_samples=2, stop=list(HUMANEVAL_STOPS))[0]
    assert capsys.readouterr().out == "\n@@\n".join(samples)

    # 3. contrastive search
    assert cli.main(["--load", tiny_checkpoint, "--prompt", PROMPT, "--max-new-tokens", "10",
                     "--contrastive-alpha", "0.6", "--contrastive-k", "3"]) == 0
    assert capsys.readouterr().out == contrastive_search(model, tok, [PROMPT], top_k=3, alpha=0.6,
                                                         max_new_tokens=10)[0]

    # 4. user mistakes: one line on stderr, exit code 2, nothing on stdout
    assert cli.main(["--load", tiny_checkpoint + "_missing", "--prompt", "x"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith("error:") and "Traceback" not in out.err
    assert cli.main(["--load", tiny_checkpoint, "--prompt", "x", "--top-p", "0"]) == 2
    assert "top_p" in capsys.readouterr().err
