"""Decontamination: planted HumanEval solutions (verbatim, re-indented, renamed variables) are removed and named in
the hits report with their span; ordinary stdlib files are not touched (the whole stdlib: test_curation_e2e.py)."""

from __future__ import annotations

import json
import os
import re
import textwrap

from megatron_code.curation.decontaminate import BenchmarkIndex, load_benchmark_items
from megatron_code.curation.pipeline import curate

STDLIB = os.path.dirname(textwrap.__file__)


def humaneval():
    return {it["item"]: it for it in load_benchmark_items()}


def rename(code: str, names: dict[str, str]) -> str:
    """Rename identifiers in code lines, leaving the docstring's prose alone (as a copier would)."""
    out, in_doc = [], False
    for line in code.split("\n"):
        quotes = line.count('"""') + line.count("'''")
        if not in_doc:
            for old, new in names.items():
                line = re.sub(rf"\b{old}\b", new, line)
        if quotes % 2 == 1:
            in_doc = not in_doc
        out.append(line)
    return "\n".join(out)


def planted_docs() -> dict[str, tuple[str, str]]:
    he = humaneval()
    p0, p12, p35 = he["HumanEval/0"], he["HumanEval/12"], he["HumanEval/35"]
    verbatim = "import os\n\n\n" + p0["prompt"] + p0["solution"] + "\n\nprint(has_close_elements([1.0], 0.5))\n"
    reindented = "class Solutions:\n" + textwrap.indent(p12["prompt"] + p12["solution"], "  ").replace("\t", "  ")
    renamed = rename(p35["prompt"] + p35["solution"], {"l": "values", "m": "best", "e": "item"})
    assert renamed != p35["prompt"] + p35["solution"]
    return {"verbatim": (verbatim, "HumanEval/0"), "reindented": (reindented, "HumanEval/12"),
            "renamed": (renamed, "HumanEval/35")}


def test_index_finds_each_planted_copy_with_its_span():
    idx = BenchmarkIndex(load_benchmark_items())
    for kind, (text, item) in planted_docs().items():
        hits = idx.hits(text)
        assert hits and {h["item"] for h in hits} == {item}, (kind, hits)
        for h in hits:
            a, b = h["span"]
            assert text[a:b].startswith(h["text"][:50]) and b > a
    verbatim = planted_docs()["verbatim"][0]
    kinds = {h["kind"] for h in idx.hits(verbatim)}
    assert kinds == {"ngram", "substring"}


def test_stdlib_files_are_not_hit():
    idx = BenchmarkIndex(load_benchmark_items())
    for name in sorted(os.listdir(STDLIB))[:120]:
        if name.endswith(".py"):
            with open(os.path.join(STDLIB, name), encoding="utf-8", errors="replace") as f:
                assert idx.hits(f.read()) == [], name


def test_pipeline_removes_and_reports(tmp_path):
    planted = planted_docs()
    records = [{"text": t, "id": k, "path": f"{k}.py"} for k, (t, _) in planted.items()]
    for name in ("bisect.py", "heapq.py", "textwrap.py", "copy.py"):
        with open(os.path.join(STDLIB, name), encoding="utf-8") as f:
            records.append({"text": f.read(), "id": name, "path": name})
    bench = tmp_path / "mybench.jsonl"
    bench.write_text(json.dumps({"task_id": "mine/1", "prompt": "def shout(word):\n",
                                 "solution": "    return word.upper() + '!' * 3 + ' said the very loud parrot to the "
                                             "quiet little fish in the pond'\n"}) + "\n")
    records.append({"text": "x = 1\n" + json.loads(bench.read_text())["prompt"]
                    + json.loads(bench.read_text())["solution"], "id": "mine", "path": "mine.py"})
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = {"name": "d", "steps": [{"decontaminate": {"humaneval": True, "benchmark_files": [str(bench)]}}],
           "exact_dedup": False, "near_dedup": False}
    report = curate([str(src)], str(tmp_path / "out"), cfg, tasks=2, progress=False)
    assert report["steps"][0] == {"step": "decontaminate", "docs_in": 8, "docs_out": 4, "dropped": 4,
                                  "bytes_in": report["steps"][0]["bytes_in"],
                                  "bytes_out": report["steps"][0]["bytes_out"]}
    assert report["rules"]["decontamination"]["contaminated_humaneval"] == 3
    assert report["rules"]["decontamination"]["contaminated_mybench"] == 1
    hits = [json.loads(line) for line in open(tmp_path / "out" / "decontamination_hits.jsonl")]
    named = {(h["id"], h["item"]) for h in hits}
    assert {(k, item) for k, (_, item) in planted.items()} | {("mine", "mine/1")} == named
    assert all(h["span"][1] > h["span"][0] and h["text"] for h in hits)
