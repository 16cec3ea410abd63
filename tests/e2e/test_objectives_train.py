"""`pretrain_code.py` with the FIM and MIM objectives on a real tokenized corpus (a tokenizer trained here on a few
standard-library files, .bin/.idx from tools/preprocess_data.py): training runs, MIM logs its three loss terms,
and an interrupted run resumed from its checkpoint gives bitwise the losses of an uninterrupted one (the
objectives' randomness is a function of (seed, epoch, sample index), restored with the consumed samples)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from ._cmd import ROOT, env, run, train_losses

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # 6 short training runs: ~40 s on 2 free cores

ITERS = 4


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from megatron_code.data.tokenizer import train_code_tokenizer

    root = tmp_path_factory.mktemp("objectives")
    src = root / "src"
    src.mkdir()
    stdlib = os.path.dirname(textwrap.__file__)
    for name in ("textwrap.py", "bisect.py", "heapq.py", "colorsys.py", "keyword.py"):
        (src / name).write_bytes(open(os.path.join(stdlib, name), "rb").read())
    tok = root / "tok"
    train_code_tokenizer(sorted(str(p) for p in src.iterdir()), 400, str(tok))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "preprocess_data.py"), "--input", str(src),
                           "--output-prefix", str(root / "data"), "--tokenizer-type", "HuggingFaceTokenizer",
                           "--tokenizer-model", str(tok), "--append-eod", "--workers", "1", "--no-progress"],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return ["--preset", "tiny", "--model.num_layers", "2", "--model.hidden_size", "64",
            "--model.ffn_hidden_size", "128", "--seq-length", "32", "--micro-batch-size", "4",
            "--global-batch-size", "4", "--data-path", str(root / "data_text_document"), "--split", "60,40,0",
            "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(tok), "--log-interval", "1",
            "--eval-interval", "2", "--eval-iters", "1", "--lr-warmup-iters", "1", "--hidden-dropout", "0.1",
            "--training.progress_bar", "false", "--train-iters", str(ITERS)]


def _records(save: str) -> list[dict]:
    with open(os.path.join(save, "metrics.jsonl")) as f:
        return [json.loads(x) for x in f]


@pytest.mark.parametrize("objective", [["--fim-rate", "0.5", "--fim-spm-rate", "0.5"],
                                       ["--mim", "--mim-beta", "0.5"]], ids=["fim", "mim"])
def test_objective_trains_and_resumes_exactly(corpus, objective, tmp_path):
    ref, part = str(tmp_path / "ref"), str(tmp_path / "part")
    run(corpus + objective + ["--save", ref])
    reference = train_losses(ref)
    assert sorted(reference) == list(range(1, ITERS + 1))
    assert all(v == v and 0 < v < 20 for v in reference.values())  # finite, sane
    records = _records(ref)
    train = [r for r in records if r["kind"] == "train"]
    if "--mim" in objective:
        for r in train:
            assert {"fwd_ce", "bwd_ce", "agreement"} <= set(r), r
            assert r["fwd_ce"] > 0 and r["bwd_ce"] > 0 and 0 <= r["agreement"] <= 1
            # total = fwd + bwd + beta * agreement (logged per step)
            assert r["loss"] == pytest.approx(r["fwd_ce"] + r["bwd_ce"] + 0.5 * r["agreement"], rel=1e-4)
    else:
        assert not any("fwd_ce" in r for r in train)
    valid = [r for r in records if r["kind"] == "valid"]  # left-to-right validation for every objective
    assert valid and all(0 < r["loss"] < 20 for r in valid), {r["kind"] for r in records}
    # interrupted after 2 iterations, resumed to the end: the same losses, bit for bit
    run(corpus + objective + ["--save", part, "--exit-interval", "2"])
    assert sorted(train_losses(part)) == [1, 2]
    out = run(corpus + objective + ["--save", part, "--load", part])
    assert "resumed from" in out.stdout
    assert train_losses(part) == reference
