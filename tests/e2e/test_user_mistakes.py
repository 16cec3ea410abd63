"""Mistakes users make on the data tools' command lines: each is a one-paragraph error naming the fix (no
traceback, non-zero exit), and nothing the user already has is overwritten or left half-written."""

import json
import os
import subprocess
import sys

import pytest

from megatron_code.data.indexed import IndexedDataset
from megatron_code.data.tokenizer import train_code_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.e2e


def run(tool, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", tool), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def refused(proc, pattern):
    assert proc.returncode != 0 and pattern in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("mistakes")
    docs = [f"def f{i}(x):\n    return x + {i}\n" for i in range(60)]
    (d / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    train_code_tokenizer(docs, 300, str(d / "tok"))
    return d


def _tok(d):
    return ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", d / "tok", "--no-progress"]


def test_preprocess_output_prefix_mistakes(corpus, tmp_path):
    for prefix, fix in (("a_text_document", "a"), ("b_text_document.bin", "b"), ("c.idx", "c")):
        proc = run("preprocess_data.py", "--input", corpus / "c.jsonl", "--output-prefix", tmp_path / prefix,
                   *_tok(corpus))
        refused(proc, f"pass --output-prefix {tmp_path / fix}")
    refused(run("preprocess_data.py", "--input", corpus / "c.jsonl", "--output-prefix", str(tmp_path) + "/",
                *_tok(corpus)), "is a directory")
    assert os.listdir(tmp_path) == []


def test_preprocess_refuses_to_overwrite_without_flag(corpus, tmp_path):
    common = ["--input", corpus / "c.jsonl", "--output-prefix", tmp_path / "x", *_tok(corpus)]
    assert run("preprocess_data.py", *common).returncode == 0
    before = open(tmp_path / "x_text_document.bin", "rb").read()
    refused(run("preprocess_data.py", *common, "--append-eod"), "--overwrite")
    assert open(tmp_path / "x_text_document.bin", "rb").read() == before
    assert run("preprocess_data.py", *common, "--append-eod", "--overwrite").returncode == 0
    assert len(open(tmp_path / "x_text_document.bin", "rb").read()) > len(before)


def test_preprocess_failed_partition_leaves_no_part_datasets(corpus, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(open(corpus / "c.jsonl").read() + "{oops\n")  # the last partition fails
    proc = run("preprocess_data.py", "--input", bad, "--output-prefix", tmp_path / "p", "--partitions", 2,
               *_tok(corpus))
    refused(proc, "not valid JSON")
    assert sorted(os.listdir(tmp_path)) == ["bad.jsonl"]


def test_merge_refuses_output_that_is_an_input_or_exists(corpus, tmp_path):
    assert run("preprocess_data.py", "--input", corpus / "c.jsonl", "--output-prefix", tmp_path / "a",
               *_tok(corpus)).returncode == 0
    a = str(tmp_path / "a_text_document")
    refused(run("merge_datasets.py", "--input", a, a, "--output-prefix", a), "is also an input")
    assert len(IndexedDataset(a)) == 60
    assert run("merge_datasets.py", "--input", a, a, "--output-prefix", tmp_path / "m").returncode == 0
    refused(run("merge_datasets.py", "--input", a, "--output-prefix", tmp_path / "m"), "--overwrite")
    assert len(IndexedDataset(str(tmp_path / "m"))) == 120
    assert run("merge_datasets.py", "--input", a, "--output-prefix", tmp_path / "m", "--overwrite").returncode == 0
    assert len(IndexedDataset(str(tmp_path / "m"))) == 60
    refused(run("merge_datasets.py", "--input", a, "--output-prefix", tmp_path / "n.bin"),
            f"--output-prefix {tmp_path / 'n'}")


def test_train_tokenizer_refuses_to_replace_a_tokenizer(corpus, tmp_path):
    common = ["--input", corpus / "c.jsonl", "--output-dir", tmp_path / "tok"]
    assert run("train_tokenizer.py", *common, "--vocab-size", 300).returncode == 0
    before = open(tmp_path / "tok" / "tokenizer.json").read()
    refused(run("train_tokenizer.py", *common, "--vocab-size", 320), "--overwrite")
    assert open(tmp_path / "tok" / "tokenizer.json").read() == before
    assert run("train_tokenizer.py", *common, "--vocab-size", 320, "--overwrite").returncode == 0
    assert open(tmp_path / "tok" / "tokenizer.json").read() != before


def test_build_index_refuses_two_run_lengths_and_non_positive_sizes(tmp_path):
    common = ["--data-path", tmp_path / "a", "--global-batch-size", 4, "--data-cache-path", tmp_path / "c"]
    refused(run("build_index.py", *common, "--seq-length", 32, "--train-iters", 5, "--train-samples", 20),
            "not both")
    refused(run("build_index.py", *common, "--seq-length", 0, "--train-iters", 5), "--seq-length must be >= 1")


def test_export_refuses_a_non_empty_save_directory(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    proc = run("convert_checkpoint.py", "--to", "hf", "--load", tmp_path / "ckpt", "--save", tmp_path / "out")
    refused(proc, "not an empty directory")
    assert os.listdir(tmp_path / "out") == ["notes.txt"]


def test_dataset_prefix_mistakes_name_the_right_prefix(corpus, tmp_path):
    from megatron_code.data.indexed import IndexedDataset, IndexedDatasetNotFound
    assert run("preprocess_data.py", "--input", corpus / "c.jsonl", "--output-prefix", tmp_path / "a",
               *_tok(corpus)).returncode == 0
    good = str(tmp_path / "a_text_document")
    for given in (good + ".bin", good + ".idx", str(tmp_path / "a")):
        with pytest.raises(IndexedDatasetNotFound, match=f"pass {good}$|pass {good}\\)"):
            IndexedDataset(given)
