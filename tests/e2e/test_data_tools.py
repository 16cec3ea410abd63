"""The data CLIs end to end: corpus -> tokenizer -> .bin/.idx (parallel, partitioned) -> index caches -> merge."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from megatron_code.data.gpt_dataset import build_gpt_datasets, num_samples_for
from megatron_code.data.indexed import IndexedDataset
from megatron_code.data.tokenizer import build_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.e2e


def run(tool, *args, ok=True):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", tool), *map(str, args)],
                          capture_output=True, text=True, timeout=300)
    if ok:
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    words = ["def", "return", "self", "x", "y", "import", "class", "for", "in", "range", "(", ")", ":", "=", "+"]
    docs = []
    for i in range(300):
        lines = [" " * int(rng.integers(0, 3)) * 4 + " ".join(rng.choice(words, int(rng.integers(1, 8))))
                 for _ in range(int(rng.integers(1, 15)))]
        docs.append("\n".join(lines) + f"\n# doc {i} é\n")
    jl = d / "train.jsonl"
    jl.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(docs)), encoding="utf-8")
    src = d / "src"
    src.mkdir()
    for i, t in enumerate(docs[:20]):
        (src / f"m{i:02d}.py").write_text(t, encoding="utf-8", newline="")
    run("train_tokenizer.py", "--input", jl, "--vocab-size", 400, "--output-dir", d / "tok")
    return d, docs


def test_preprocess_jsonl_parallel_and_partitions_identical(corpus, tmp_path):
    d, docs = corpus
    tok = build_tokenizer("HuggingFaceTokenizer", tokenizer_model=str(d / "tok"))
    common = ["--input", d / "train.jsonl", "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model",
              d / "tok", "--append-eod"]
    p1 = run("preprocess_data.py", *common, "--output-prefix", tmp_path / "one", "--workers", 1)
    run("preprocess_data.py", *common, "--output-prefix", tmp_path / "two", "--workers", 2)
    run("preprocess_data.py", *common, "--output-prefix", tmp_path / "part", "--workers", 2, "--partitions", 3)
    assert "300 documents" in p1.stdout
    ref = open(tmp_path / "one_text_document.bin", "rb").read()
    for name in ("two", "part"):
        assert open(tmp_path / f"{name}_text_document.bin", "rb").read() == ref
        assert open(tmp_path / f"{name}_text_document.idx", "rb").read() == \
            open(tmp_path / "one_text_document.idx", "rb").read()
    ds = IndexedDataset(str(tmp_path / "one_text_document"))
    assert len(ds) == 300 and ds.dtype == np.uint16
    for i in (0, 17, 299):
        assert ds[i].tolist() == tok.encode(docs[i]) + [tok.eod]
        assert tok.decode(ds[i][:-1]) == docs[i]
    assert not [f for f in os.listdir(tmp_path) if "tmp" in f or "part" in f and f.endswith(".jsonl")]


def test_preprocess_source_dir_and_bad_lines(corpus, tmp_path):
    d, docs = corpus
    tok_args = ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", d / "tok"]
    run("preprocess_data.py", "--input", d / "src", "--output-prefix", tmp_path / "src", *tok_args, "--workers", 2)
    ds = IndexedDataset(str(tmp_path / "src_text_document"))
    assert len(ds) == 20
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "a"}\n{oops\n{"text": "b"}\n{"content": "c"}\n')
    proc = run("preprocess_data.py", "--input", bad, "--output-prefix", tmp_path / "bad", *tok_args, ok=False)
    assert proc.returncode == 1 and "bad.jsonl:2: not valid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr and not os.path.exists(tmp_path / "bad_text_document.idx")
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]
    proc = run("preprocess_data.py", "--input", bad, "--output-prefix", tmp_path / "bad", *tok_args,
               "--skip-bad-lines", "--workers", 2)
    assert "skipped 2 bad lines" in proc.stdout
    assert len(IndexedDataset(str(tmp_path / "bad_text_document"))) == 2
    proc = run("preprocess_data.py", "--input", tmp_path / "missing.jsonl", "--output-prefix", tmp_path / "m",
               *tok_args, ok=False)
    assert proc.returncode == 1 and "input not found" in proc.stderr


def test_build_index_then_ranks_only_load(corpus, tmp_path):
    d, _ = corpus
    run("preprocess_data.py", "--input", d / "train.jsonl", "--output-prefix", tmp_path / "a",
        "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", d / "tok", "--append-eod")
    prefix = str(tmp_path / "a_text_document")
    run("merge_datasets.py", "--input", prefix, prefix, "--output-prefix", tmp_path / "aa")
    assert len(IndexedDataset(str(tmp_path / "aa"))) == 600
    flags = dict(seq_length=32, seed=7, split="90,5,5")
    n = num_samples_for(global_batch_size=4, train_iters=50, eval_interval=25, eval_iters=2)
    proc = run("build_index.py", "--data-path", "0.4", prefix, "0.6", tmp_path / "aa", "--split", "90,5,5",
               "--seq-length", 32, "--seed", 7, "--train-iters", 50, "--global-batch-size", 4,
               "--eval-interval", 25, "--eval-iters", 2, "--data-cache-path", tmp_path / "cache")
    assert "train: 200 samples" in proc.stdout
    tr, va, te = build_gpt_datasets(data_path=["0.4", prefix, "0.6", str(tmp_path / "aa")], num_samples=n,
                                    cache_dir=str(tmp_path / "cache"), is_builder=False, **flags)
    assert len(tr) == 200 and len(va) == n[1] and len(te) == n[2]
    # The same blend from Megatron-LM's --data-args-path file; the caches are found under the same keys.
    blend = tmp_path / "blend.txt"
    blend.write_text(f"0.4 {prefix}\n0.6 {tmp_path / 'aa'}\n")
    common = ["--split", "90,5,5", "--seq-length", 32, "--seed", 7, "--train-iters", 50, "--global-batch-size", 4,
              "--eval-interval", 25, "--eval-iters", 2]
    before = sorted(os.listdir(tmp_path / "cache"))
    proc = run("build_index.py", "--data-args-path", blend, *common, "--data-cache-path", tmp_path / "cache")
    assert "train: 200 samples" in proc.stdout and sorted(os.listdir(tmp_path / "cache")) == before
    proc = run("build_index.py", "--data-args-path", blend, "--data-path", prefix, *common, "--data-cache-path",
               tmp_path / "c3", ok=False)
    assert proc.returncode == 1 and "both given" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("build_index.py", "--data-path", "0.4", prefix, "0.6", "--seq-length", 32, "--train-iters", 5,
               "--global-batch-size", 4, "--data-cache-path", tmp_path / "c2", ok=False)
    assert proc.returncode == 1 and "weights do not match paths" in proc.stderr


def test_prepare_stdlib_corpus_cli(tmp_path):
    proc = run("prepare_stdlib_corpus.py", "--output-dir", tmp_path / "s")
    assert "train:" in proc.stdout and os.path.getsize(tmp_path / "s" / "train.jsonl") > 1_000_000
    (tmp_path / "s" / "valid.jsonl").write_text("{}\n")  # stands for a user's own file: it must survive
    proc = run("prepare_stdlib_corpus.py", "--output-dir", tmp_path / "s", ok=False)
    assert proc.returncode == 1 and "--overwrite" in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "s" / "valid.jsonl").read_text() == "{}\n"
    run("prepare_stdlib_corpus.py", "--output-dir", tmp_path / "s", "--overwrite")
    assert os.path.getsize(tmp_path / "s" / "valid.jsonl") > 1000


def test_preprocess_accepts_megatron_flags_and_names_the_unsupported_ones(corpus, tmp_path):
    d, _ = corpus
    common = ["--input", d / "train.jsonl", "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model",
              d / "tok", "--append-eod"]
    run("preprocess_data.py", *common, "--output-prefix", tmp_path / "plain")
    run("preprocess_data.py", *common, "--output-prefix", tmp_path / "meg", "--dataset-impl", "mmap",
        "--keep-sequential-samples", "--log-interval", 1000)
    for ext in ("bin", "idx"):  # the compatibility flags change nothing
        assert open(tmp_path / f"meg_text_document.{ext}", "rb").read() == \
            open(tmp_path / f"plain_text_document.{ext}", "rb").read()
    for extra, pattern in ((["--split-sentences"], "drop the flag"), (["--dataset-impl", "lazy"], "only 'mmap'")):
        proc = run("preprocess_data.py", *common, "--output-prefix", tmp_path / "x", *extra, ok=False)
        assert proc.returncode == 2 and pattern in proc.stderr and "Traceback" not in proc.stderr
        assert not os.path.exists(tmp_path / "x_text_document.idx")
