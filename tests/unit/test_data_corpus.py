"""Corpus readers: JSONL (plain/gz/zst), bad lines with file:line, notebooks, source trees, stdlib corpus."""

import gzip
import json
import os

import pytest
import zstandard

from megatron_code.data.corpus import (CorpusError, build_stdlib_corpus, iter_jsonl, iter_source_tree,
                                       notebook_to_text)

DOCS = [{"text": "print(1)\n", "id": 1}, {"text": "x = 'é'\n", "id": 2}, {"text": "", "id": 3}]


def write_jsonl(path, lines):
    raw = b"".join((json.dumps(x).encode() if isinstance(x, dict) else x) + b"\n" for x in lines)
    if str(path).endswith(".gz"):
        raw = gzip.compress(raw)
    elif str(path).endswith(".zst"):
        raw = zstandard.ZstdCompressor().compress(raw)
    open(path, "wb").write(raw)
    return str(path)


@pytest.mark.parametrize("name", ["c.jsonl", "c.jsonl.gz", "c.jsonl.zst"])
def test_jsonl_formats(tmp_path, name):
    p = write_jsonl(tmp_path / name, DOCS)
    assert [d["text"] for d in iter_jsonl(p)] == [d["text"] for d in DOCS]


def test_jsonl_multiple_keys(tmp_path):
    p = write_jsonl(tmp_path / "c.jsonl", [{"text": "a", "code": "b"}])
    assert list(iter_jsonl(p, json_keys=("text", "code"))) == [{"text": "a", "code": "b"}]


@pytest.mark.parametrize("line,match", [
    (b"{not json", "c.jsonl:2: not valid JSON"),
    (json.dumps({"content": "x"}).encode(), "c.jsonl:2: missing key 'text'"),
    (b'{"text": "\xff\xfe"}', "c.jsonl:2: invalid UTF-8"),
    (b'{"text": "\\ud800"}', "c.jsonl:2: .*unpaired surrogate"),
    (b'{"text": 5}', "c.jsonl:2: key 'text' holds int"),
    (b"[1, 2]", "c.jsonl:2: expected a JSON object"),
])
def test_bad_lines_name_file_and_line(tmp_path, line, match):
    p = write_jsonl(tmp_path / "c.jsonl", [DOCS[0], line, DOCS[1]])
    with pytest.raises(CorpusError, match=match):
        list(iter_jsonl(p))
    stats = {}
    assert [d["text"] for d in iter_jsonl(p, skip_bad_lines=True, stats=stats)] == ["print(1)\n", "x = 'é'\n"]
    assert stats["bad_lines"] == 1


def test_notebook_to_text():
    nb = {"cells": [
        {"cell_type": "markdown", "source": ["# Title\n", "\n", "Some *text*"]},
        {"cell_type": "code", "source": "import os\nprint(os.name)", "outputs": [{"text": "posix"}]},
        {"cell_type": "code", "source": []},
        {"cell_type": "code", "source": ["x = 1\n"], "outputs": []},
    ], "nbformat": 4}
    assert notebook_to_text(nb) == "# # Title\n#\n# Some *text*\n\nimport os\nprint(os.name)\n\nx = 1\n"
    assert notebook_to_text({"cells": []}) == ""


def test_source_tree(tmp_path):
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_text("a = 1\n")
    (tmp_path / "pkg" / "__pycache__" / "a.py").write_text("junk")
    (tmp_path / "b.c").write_text("int main(){}\n")
    (tmp_path / "notes.bin").write_bytes(b"\0\1")
    (tmp_path / "n.ipynb").write_text(json.dumps({"cells": [{"cell_type": "code", "source": "y = 2"}]}))
    docs = list(iter_source_tree(tmp_path))
    assert [(d["path"], d["language"]) for d in docs] == [("b.c", "c"), ("n.ipynb", "python"), ("pkg/a.py", "python")]
    assert docs[1]["text"] == "y = 2\n" and docs[2]["size"] == 6
    assert [d["path"] for d in iter_source_tree(tmp_path, extensions=["py"])] == ["pkg/a.py"]
    (tmp_path / "bad.py").write_bytes(b"x = '\xff'\n")
    with pytest.raises(CorpusError, match="bad.py: invalid UTF-8"):
        list(iter_source_tree(tmp_path))
    stats = {}
    assert len(list(iter_source_tree(tmp_path, skip_bad_files=True, stats=stats))) == 3 and stats["bad_files"] == 1


def test_stdlib_corpus_is_deterministic_file_level_split(tmp_path):
    root = tmp_path / "lib"
    for i in range(200):
        (root / f"m{i // 50}").mkdir(parents=True, exist_ok=True)
        (root / f"m{i // 50}" / f"f{i}.py").write_text(f"x = {i}\n")
    (root / "site-packages").mkdir()
    (root / "site-packages" / "third.py").write_text("no = 1\n")
    a = build_stdlib_corpus(tmp_path / "a", seed=1, valid_fraction=0.1, test_fraction=0.1, root=str(root))
    b = build_stdlib_corpus(tmp_path / "b", seed=1, valid_fraction=0.1, test_fraction=0.1, root=str(root))
    rows = {s: [json.loads(line) for line in open(a[s])] for s in a}
    for s in a:
        assert open(a[s]).read() == open(b[s]).read()
    paths = [r["path"] for s in rows for r in rows[s]]
    assert len(paths) == len(set(paths)) == 200 and "site-packages/third.py" not in paths
    assert 5 <= len(rows["valid"]) <= 40 and 5 <= len(rows["test"]) <= 40
    assert set(rows["train"][0]) == {"text", "path", "language", "size"}
    c = build_stdlib_corpus(tmp_path / "c", seed=2, valid_fraction=0.1, test_fraction=0.1, root=str(root))
    assert open(c["valid"]).read() != open(a["valid"]).read()
    assert sorted(os.listdir(tmp_path / "a")) == ["test.jsonl", "train.jsonl", "valid.jsonl"]


def test_real_stdlib_corpus(tmp_path):
    paths = build_stdlib_corpus(tmp_path / "s")
    n = {s: sum(1 for _ in open(p)) for s, p in paths.items()}
    assert n["train"] > 500 and n["valid"] > 0 and n["test"] > 0
    doc = json.loads(open(paths["train"]).readline())
    assert doc["language"] == "python" and doc["path"].endswith(".py")


def test_zstd_multiple_frames(tmp_path):
    c = zstandard.ZstdCompressor()
    raw = c.compress(b'{"text": "a"}\n') + c.compress(b'{"text": "b"}\n')
    (tmp_path / "m.jsonl.zst").write_bytes(raw)
    assert [d["text"] for d in iter_jsonl(str(tmp_path / "m.jsonl.zst"))] == ["a", "b"]
