"""tools/curate_corpus.py end to end on a small corpus: readers with provenance, license/quality/dedup counts
asserted exactly, bad input counted, bins byte-identical to tools/preprocess_data.py, user errors."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STDLIB = os.path.dirname(textwrap.__file__)
MIT = ("MIT License\n\nPermission is hereby granted, free of charge, to any person obtaining a copy\nof this "
       "software and associated documentation files\n")
GPL = "GNU GENERAL PUBLIC LICENSE\n   Version 3, 29 June 2007\n"


def run(args, check=True):
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    return p


def stdlib(name):
    with open(os.path.join(STDLIB, name), encoding="utf-8") as f:
        return f.read()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    repos = root / "repos"
    (repos / "mitrepo" / "pkg").mkdir(parents=True)
    (repos / "mitrepo" / "LICENSE").write_text(MIT)
    (repos / "mitrepo" / "pkg" / "bisect.py").write_text(stdlib("bisect.py"))
    (repos / "mitrepo" / "pkg" / "bisect_copy.py").write_text(stdlib("bisect.py"))            # exact copy
    (repos / "mitrepo" / "pkg" / "logo.png").write_bytes(b"\x89PNG\r\n")                       # not code
    (repos / "mitrepo" / "pkg" / "latin1.py").write_bytes(b"# caf\xe9\nx = 1\n")              # not UTF-8
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {},
          "cells": [{"cell_type": "markdown", "id": "a", "metadata": {}, "source": ["# Title\n", "text"]},
                    {"cell_type": "code", "id": "b", "metadata": {}, "execution_count": 1, "source": "x = 1\nprint(x)",
                     "outputs": [{"output_type": "stream", "name": "stdout", "text": "1\n"}]}]}
    (repos / "mitrepo" / "nb.ipynb").write_text(json.dumps(nb))
    (repos / "mitrepo" / "broken.ipynb").write_text("{\"cells\": 3}")                          # invalid notebook
    (repos / "gplrepo").mkdir()
    (repos / "gplrepo" / "COPYING").write_text(GPL)
    (repos / "gplrepo" / "heapq.py").write_text(stdlib("heapq.py"))
    jl = root / "records.jsonl.gz"
    with gzip.open(jl, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": stdlib("copy.py"), "path": "copy.py", "repo": "r1", "license": "mit"}) + "\n")
        f.write(json.dumps({"text": "x = [" + ",".join(["1"] * 600) + "]\n", "path": "min.py", "license": "MIT"})
                + "\n")                                                                        # minified
        f.write(json.dumps({"text": stdlib("glob.py"), "path": "g.py"}) + "\n")               # unknown license
        f.write("{not json\n")
        f.write(json.dumps({"content": "x"}) + "\n")
    return root


PIPE = """name: test
steps:
  - language: {languages: palm}
  - license: {keep_unknown: false}
  - quality: {}
exact_dedup: true
near_dedup: {threshold: 0.9}
"""


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from megatron_code.data.tokenizer import train_code_tokenizer

    d = tmp_path_factory.mktemp("tok")
    train_code_tokenizer([os.path.join(STDLIB, n) for n in ("textwrap.py", "heapq.py")], 400, str(d / "tok"))
    return str(d / "tok")


def test_curate_counts_provenance_and_identical_bins(corpus, tokenizer, tmp_path):
    pipe = tmp_path / "p.yaml"
    pipe.write_text(PIPE)
    out = tmp_path / "out"
    tok = ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", tokenizer, "--append-eod"]
    p = run(["tools/curate_corpus.py", "--input", str(corpus / "repos"), str(corpus / "records.jsonl.gz"),
             "--output", str(out), "--pipeline", str(pipe), "--tasks", "2", "--workers", "2", "--no-progress", *tok])
    report = json.loads((out / "report.json").read_text())
    rd = report["read"]
    # repos: bisect, bisect_copy, nb.ipynb, heapq (4 docs); jsonl: copy, min, glob (3 docs)
    assert rd["docs"] == 7
    assert (rd["skipped_not_utf8"], rd["skipped_invalid_notebook"], rd["skipped_invalid_json"],
            rd["skipped_missing_text"], rd["files_unknown_extension"]) == (1, 1, 1, 1, 3)  # png, 2 license files
    steps = {r["step"]: r for r in report["steps"]}
    assert steps["language"]["dropped"] == 0
    assert steps["license"]["dropped"] == 2                # GPL heapq, unknown-license glob
    rules = report["rules"]
    assert rules["license"]["dropped_copyleft_license"] == 1 and rules["license"]["dropped_unknown_license"] == 1
    assert rules["license"]["license_MIT"] == 5 and rules["license"]["license_GPL-3.0"] == 1
    assert steps["quality"]["dropped"] == 1 and rules["code quality"]["dropped_max_line_length"] == 1
    assert steps["exact_dedup"]["dropped"] == 1            # bisect_copy
    assert steps["near_dedup"]["dropped"] == 0
    assert report["written"]["docs"] == 3
    assert "written: 3 documents" in p.stdout and "license" in p.stdout

    docs = []
    for name in sorted(os.listdir(out / "data")):
        with gzip.open(out / "data" / name, "rt") as f:
            docs += [json.loads(line) for line in f]
    by_path = {d["metadata"]["path"]: d for d in docs}
    assert set(by_path) == {"pkg/bisect.py", "nb.ipynb", "copy.py"}
    assert by_path["pkg/bisect.py"]["metadata"]["repo"] == "mitrepo"
    assert by_path["pkg/bisect.py"]["metadata"]["license"] == "MIT"
    cells = by_path["nb.ipynb"]["metadata"]["cells"]
    assert [c["type"] for c in cells] == ["markdown", "code"] and "outputs" not in cells[1]
    assert by_path["nb.ipynb"]["text"] == "# # Title\n# text\n\nx = 1\nprint(x)\n"
    assert by_path["copy.py"]["metadata"]["repo"] == "r1" and by_path["copy.py"]["metadata"]["license"] == "MIT"

    # the same documents in the same order through preprocess_data.py: byte-identical .bin/.idx
    shards = [str(out / "data" / n) for n in sorted(os.listdir(out / "data"))]
    run(["tools/preprocess_data.py", "--input", *shards, "--output-prefix", str(tmp_path / "pp"),
         "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", tokenizer, "--append-eod", "--no-progress"])
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"pp_text_document{ext}").read_bytes() == (out / f"corpus_text_document{ext}").read_bytes()

    # the same command again resumes: every task is recorded complete, same report counts
    run(["tools/curate_corpus.py", "--input", str(corpus / "repos"), str(corpus / "records.jsonl.gz"),
         "--output", str(out), "--pipeline", str(pipe), "--tasks", "2", "--workers", "2", "--no-progress", *tok])
    again = json.loads((out / "report.json").read_text())
    assert again["steps"] == report["steps"] and again["written"] == report["written"]


def test_user_errors_are_one_clear_line(corpus, tmp_path):
    p = run(["tools/curate_corpus.py", "--input", str(corpus), "--output", str(tmp_path / "o"), "--pipeline", "nope"],
            check=False)
    assert p.returncode == 1 and "study, palm, phi1, jupyt5" in p.stderr and "Traceback" not in p.stderr
    p = run(["tools/curate_corpus.py", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o"),
             "--pipeline", "study"], check=False)
    assert p.returncode == 1 and "no such file" in p.stderr and "Traceback" not in p.stderr
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "precious.txt").write_text("x")
    p = run(["tools/curate_corpus.py", "--input", str(corpus), "--output", str(mine), "--pipeline", "study"],
            check=False)
    assert p.returncode == 1 and "not a curation output directory" in p.stderr
    assert (mine / "precious.txt").read_text() == "x"
    p = run(["tools/curate_corpus.py", "--input", str(corpus), "--output", str(tmp_path / "o2"), "--pipeline", "study",
             "--set", "quality.max_line_len=3"], check=False)
    assert p.returncode == 1 and "unknown thresholds" in p.stderr and "Traceback" not in p.stderr


def test_plain_jsonl_output_and_overwrite(tmp_path):
    from megatron_code.curation.pipeline import CurationError, curate

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": f"x = {i}\n", "id": f"d{i}", "path": "a.py"}) + "\n"
                           for i in range(3)))
    cfg = {"name": "plain", "exact_dedup": False, "near_dedup": False, "output": {"compression": "none"}}
    curate([str(src)], str(tmp_path / "out"), cfg, progress=False)
    lines = (tmp_path / "out" / "data" / "00000.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == ["d0", "d1", "d2"]
    other = dict(cfg, name="other")
    with pytest.raises(CurationError, match="--overwrite"):
        curate([str(src)], str(tmp_path / "out"), other, progress=False)
    report = curate([str(src)], str(tmp_path / "out"), other, overwrite=True, progress=False)
    assert report["pipeline"] == "other" and report["written"]["docs"] == 3
