"""Shared e2e fixtures. Built lazily: a test that does not ask for a fixture pays nothing for it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A real checkpoint directory of the `tiny` preset trained for two steps on four stdlib files, with a
    400-token byte-level BPE tokenizer trained on the same files (saved inside the checkpoint by the trainer).
    Untrained in any useful sense: for plumbing and file-format tests only, never for quality. Built once per
    session (about 20 s on 2 cores) and shared by every test that asks for it; treat it as read-only."""
    from megatron_code.data.tokenizer import train_code_tokenizer

    root = tmp_path_factory.mktemp("tiny_checkpoint")
    src = root / "src"
    src.mkdir()
    stdlib = os.path.dirname(textwrap.__file__)
    for name in ("textwrap.py", "heapq.py", "bisect.py", "copy.py"):
        (src / name).write_bytes(open(os.path.join(stdlib, name), "rb").read())
    tok_dir = root / "tok"
    train_code_tokenizer(sorted(str(p) for p in src.iterdir()), 400, str(tok_dir))
    r = _run(["tools/preprocess_data.py", "--input", str(src), "--output-prefix", str(root / "data"),
              "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(tok_dir), "--append-eod",
              "--workers", "1", "--no-progress"])
    assert r.returncode == 0, r.stderr
    ckpt = root / "ckpt"
    r = _run(["pretrain_code.py", "--preset", "tiny", "--data-path", str(root / "data_text_document"),
              "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(tok_dir), "--train-iters", "2",
              "--micro-batch-size", "2", "--seq-length", "32", "--save", str(ckpt), "--save-interval", "2",
              "--eval-interval", "1000", "--log-interval", "1", "--training.progress_bar", "false"])
    assert r.returncode == 0, r.stderr[-3000:]
    return str(ckpt)
