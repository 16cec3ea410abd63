"""CodeReader: .zst JSONL, provenance fields, notebook cells and renderers, repository licenses, counted skips."""

from __future__ import annotations

import json

import zstandard

from megatron_code.curation.readers import CodeReader, list_units, shard
from megatron_code.data.corpus import NOTEBOOK_MARKERS, notebook_to_text, render_cells

NB = {"nbformat": 4, "nbformat_minor": 5, "metadata": {},
      "cells": [{"cell_type": "markdown", "id": "a", "metadata": {}, "source": "# Plot"},
                {"cell_type": "code", "id": "b", "metadata": {}, "execution_count": 1, "source": ["x = 1\n", "x"],
                 "outputs": [{"output_type": "execute_result", "execution_count": 1, "metadata": {},
                              "data": {"text/plain": "1"}}]}]}


def read(reader, rank=0, world=1):
    return list(reader.run(None, rank, world))


def test_zst_jsonl_provenance_and_skips(tmp_path):
    lines = [json.dumps({"text": "print(1)\n", "path": "src/a.py", "repo": "me/x", "license": "apache-2.0",
                         "stars": 3}),
             json.dumps({"text": "x", "metadata": {"path": "b.rs"}}),
             "[1, 2]", json.dumps({"text": 5}), json.dumps({"text": "\ud800"}), json.dumps({"text": ""})]
    raw = ("\n".join(lines) + "\n").encode() + b"\xff\xfe not utf8\n"
    path = tmp_path / "d.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(raw))
    r = CodeReader([str(path)])
    docs = read(r)
    assert [d.text for d in docs] == ["print(1)\n", "x"]
    m = docs[0].metadata
    assert (m["path"], m["repo"], m["license"], m["language"], m["stars"]) == ("src/a.py", "me/x", "Apache-2.0",
                                                                               "python", 3)
    assert m["source"].endswith("d.jsonl.zst:1") and docs[1].metadata["language"] == "rust"
    s = r.stats
    assert (s["skipped_invalid_json"].total, s["skipped_missing_text"].total, s["skipped_not_utf8"].total,
            s["skipped_empty_text"].total) == (1, 1, 2, 1)


def test_notebook_cells_outputs_and_renderers(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "LICENSE").write_text("Permission is hereby granted, free of charge, to any person obtaining "
                                            "a copy of this software")
    (tmp_path / "r" / "n.ipynb").write_text(json.dumps(NB))
    docs = read(CodeReader([str(tmp_path / "r")], notebook_renderer="markers", notebook_outputs=True))
    assert len(docs) == 1
    cells = docs[0].metadata["cells"]
    assert cells == [{"type": "markdown", "source": "# Plot"}, {"type": "code", "source": "x = 1\nx",
                                                                 "outputs": ["1"]}]
    assert docs[0].text == (NOTEBOOK_MARKERS["start"] + "<jupyter_text># Plot<jupyter_code>x = 1\nx"
                            "<jupyter_output>1")
    assert docs[0].metadata["repo"] == "r" and docs[0].metadata["license"] == "MIT"
    assert docs[0].metadata["path"] == "n.ipynb"
    # the "comments" renderer is the project's existing notebook flattening
    assert render_cells(cells, "comments") == notebook_to_text(NB) == "# # Plot\n\nx = 1\nx\n"


def test_units_are_split_in_contiguous_blocks(tmp_path):
    for i in range(5):
        (tmp_path / f"f{i}.py").write_text(f"x = {i}\n")
    units = list_units([str(tmp_path)])
    blocks = [shard(units, r, 3) for r in range(3)]
    assert sum(blocks, []) == units and all(blocks)
    texts = [d.text for r in range(3) for d in read(CodeReader([str(tmp_path)]), r, 3)]
    assert texts == [f"x = {i}\n" for i in range(5)]


def test_one_big_jsonl_file_is_shared_by_tasks(tmp_path):
    """Byte ranges of one file: every line read once, by the range it starts in, with its line number; the tasks'
    outputs concatenated are the unsplit read (lines of every length, blank lines and a bad line included)."""
    lines = [json.dumps({"text": f"x = {i}\n" + "y" * (i * 37 % 300), "path": f"{i}.py"}) for i in range(60)]
    lines[7], lines[30] = "", "not json"
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(lines) + "\n")
    whole = CodeReader([str(path)], split_bytes=0)
    expected = [(d.text, d.metadata["source"]) for d in read(whole)]
    assert len(expected) == 58 and expected[-1][1].endswith("big.jsonl:60")
    for split, world in ((97, 3), (1000, 2), (5, 4)):  # ranges smaller than a line, a few lines, many ranges
        assert len(list_units([str(path)], split)) == -(-path.stat().st_size // split)
        got, skipped = [], 0
        for rank in range(world):
            reader = CodeReader([str(path)], split_bytes=split)
            got += [(d.text, d.metadata["source"]) for d in read(reader, rank, world)]
            skipped += reader.stats["skipped_invalid_json"].total  # a missing stat reads as 0
        assert got == expected and skipped == 1, split
