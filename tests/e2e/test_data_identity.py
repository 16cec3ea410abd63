"""Data identity from the command line (issue 14 findings 6 and 8): data made by another tokenizer of the same
vocabulary size, a killed --partitions run's leftovers, a corrupt .jsonl.gz, an index that cannot fit."""

import gzip
import json
import os
import subprocess
import sys

import pytest

from megatron_code.data.tokenizer import train_code_tokenizer

from ._cmd import ROOT, env, run

pytestmark = pytest.mark.e2e


def tool(name, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", name), *map(str, args)], cwd=ROOT,
                          env=env(), capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small JSONL corpus and two code tokenizers of the same size trained on different text."""
    d = tmp_path_factory.mktemp("identity")
    docs = [f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(200)]
    (d / "in").mkdir()
    (d / "in" / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    train_code_tokenizer(docs, 300, str(d / "tok_a"))
    train_code_tokenizer(["SELECT a, b FROM t WHERE c = 1;\n" * 40, "<html><body>x</body></html>\n" * 40], 300,
                         str(d / "tok_b"))
    return d


def _preprocess(corpus, out, tok="tok_a", *extra):
    return tool("preprocess_data.py", "--input", corpus / "in" / "train.jsonl", "--output-prefix", out,
                "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", corpus / tok, "--append-eod",
                "--no-progress", *extra)


def _train_args(corpus, prefix, tok, iters="2"):
    return ["--preset", "tiny", "--model.num_layers", "1", "--model.hidden_size", "32", "--model.ffn_hidden_size",
            "64", "--seq-length", "16", "--micro-batch-size", "2", "--global-batch-size", "2", "--train-iters",
            iters, "--eval-interval", "0", "--training.progress_bar", "false", "--tokenizer-type",
            "HuggingFaceTokenizer", "--tokenizer-model", str(corpus / tok), "--model.vocab_size", "320",
            "--data-path", prefix, "--split", "100,0,0"]


def test_data_made_with_another_tokenizer_of_the_same_size_is_refused(corpus, tmp_path):
    """Finding 6: it trained without a word (every id in range, meaning different)."""
    out = _preprocess(corpus, tmp_path / "code")
    assert out.returncode == 0, out.stderr[-2000:]
    prefix = str(tmp_path / "code_text_document")
    sidecar = json.load(open(prefix + ".tokenizer.json"))
    assert sidecar["vocab_size"] == 300 and len(sidecar["fingerprint"]) == 64
    wrong = run(_train_args(corpus, prefix, "tok_b"), check=False)
    assert wrong.returncode == 2, wrong.stderr[-2000:]
    errors = [ln for ln in wrong.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "tokenized with another tokenizer" in errors[0] and "tok_b" in errors[0], errors
    assert run(_train_args(corpus, prefix, "tok_a")).returncode == 0


def test_sample_count_whose_index_cannot_fit_is_refused_up_front(corpus, tmp_path):
    """Finding 7 (index part): --train-iters 1e11 on a tiny corpus built an index without bound (5 GB and
    growing) instead of saying it cannot fit."""
    assert _preprocess(corpus, tmp_path / "code").returncode == 0
    out = run(_train_args(corpus, str(tmp_path / "code_text_document"), "tok_a", iters="1e11")
              + ["--data-cache-path", str(tmp_path / "cache")], check=False, timeout=600)
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "sample index" in errors[0] and "GiB" in errors[0], out.stderr[-2000:]
    assert not os.path.exists(tmp_path / "cache") or not os.listdir(tmp_path / "cache")


def test_killed_partitions_run_leaves_nothing_a_glob_would_ingest(corpus, tmp_path):
    """Finding 6: a killed --partitions run left partial datasets beside the output and line-range copies of the
    corpus beside the input (`*.jsonl`), which a later glob ingested. The run is SIGKILLed right after its
    partitions are complete (where the old code had both kinds of leftovers on disk)."""
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "train.jsonl").write_bytes((corpus / "in" / "train.jsonl").read_bytes())
    out_dir = tmp_path / "out"
    kill_at_merge = (
        "import os, signal; from megatron_code.commands import preprocess_data as p; "
        "p.merge_datasets = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL); "
        f"p.main({['--input', str(inp / 'train.jsonl'), '--output-prefix', str(out_dir / 'code'), '--tokenizer-type', 'HuggingFaceTokenizer', '--tokenizer-model', str(corpus / 'tok_a'), '--partitions', '2', '--no-progress']!r})")  # noqa: E501
    killed = subprocess.run([sys.executable, "-c", kill_at_merge], cwd=ROOT, env=env(), capture_output=True,
                            text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert sorted(os.listdir(inp)) == ["train.jsonl"]
    visible = [f for f in os.listdir(out_dir) if not f.startswith(".")]
    assert visible == [], visible
    again = tool("preprocess_data.py", "--input", inp / "train.jsonl", "--output-prefix", out_dir / "code",
                 "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", corpus / "tok_a", "--partitions",
                 "2", "--no-progress")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "left by an interrupted --partitions run" in again.stderr
    assert sorted(os.listdir(out_dir)) == ["code_text_document.bin", "code_text_document.idx",
                                           "code_text_document.tokenizer.json"]


def test_bad_jsonl_gz_error_names_the_file(corpus, tmp_path):
    """Finding 8: a truncated .jsonl.gz ended in an EOFError traceback without the file's name."""
    data = gzip.compress((corpus / "in" / "train.jsonl").read_bytes())
    bad = tmp_path / "broken.jsonl.gz"
    bad.write_bytes(data[:len(data) // 2])
    out = tool("preprocess_data.py", "--input", bad, "--output-prefix", tmp_path / "x", "--tokenizer-type",
               "HuggingFaceTokenizer", "--tokenizer-model", corpus / "tok_a", "--no-progress")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert f"{bad}: corrupt or truncated gzip file" in out.stderr, out.stderr[-2000:]
    assert [f for f in os.listdir(tmp_path) if f.startswith("x")] == []
