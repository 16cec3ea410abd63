"""Readers that keep provenance: JSONL (.jsonl/.gz/.zst), source trees (a directory of repositories), notebooks.

One datatrove reader step, :class:`CodeReader`, takes every ``--input`` path. It lists *units* (a JSONL file, a
notebook, a source file) in a fixed order, gives task ``rank`` of ``world_size`` a contiguous block of them, and
yields datatrove ``Document`` s whose metadata carries ``path``, ``repo``, ``license`` (SPDX id or None),
``language`` and ``source`` (input file, and line for JSONL). Notebooks keep their cells (type, order, source;
outputs only when asked) in ``metadata["cells"]``; their text is rendered by ``megatron_code.data.corpus.render_cells``.

Bad input never stops a run and is never dropped silently: every skipped line or file is counted by reason
(``skipped_invalid_json``, ``skipped_missing_text``, ``skipped_not_utf8``, ``skipped_invalid_notebook``,
``skipped_unreadable``, ``skipped_empty_text``) in the step's stats, which the report shows, and logged with its
file and line.

datatrove's own ``JsonlReader`` is not used for input: it skips undecodable lines with a log line only and drops
records without text uncounted, and it has no source-tree or notebook reading (NOTES.md).
"""

from __future__ import annotations

import json
import os
import warnings

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.readers.base import BaseReader
from datatrove.utils.logging import logger

from megatron_code.curation.languages import language_of
from megatron_code.curation.licenses import LICENSE_FILE_NAMES, detect_license, normalize_spdx
from megatron_code.data.corpus import iter_jsonl_lines, notebook_cells, render_cells

from ..errors import UserError

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".jsonl.zstd", ".json.gz")
PROVENANCE_KEYS = ("path", "repo", "license", "language")


class InputError(UserError, ValueError):
    """An --input path that cannot be read at all (the message names it and the fix)."""


def is_jsonl(path: str) -> bool:
    return path.endswith(JSONL_SUFFIXES)


def list_units(inputs, split_bytes: int = 0) -> list[tuple]:
    """Every unit of work in input order: ``("jsonl", path)``, ``("notebook", path, root, repo)``,
    ``("file", path, root, repo)``; an uncompressed JSONL file larger than ``split_bytes`` (> 0) is several units
    ``("jsonl", path, start, end)``, one per byte range, each reading the lines that start in it, so one big file
    can be spread over several tasks (a compressed stream cannot be entered in the middle). Directories are
    walked in sorted order (hidden directories and __pycache__ skipped). A directory with a LICENSE/COPYING file
    at its root is one repository; otherwise each of its subdirectories is one repository (files directly inside
    it belong to no repository)."""
    units: list[tuple] = []
    for path in inputs:
        path = os.fspath(path)
        if os.path.isdir(path):
            units.extend(_tree_units(path, split_bytes))
        elif os.path.isfile(path):
            if is_jsonl(path):
                units.extend(_jsonl_units(path, split_bytes))
            elif path.endswith(".ipynb"):
                units.append(("notebook", path, os.path.dirname(path), None))
            else:
                units.append(("file", path, os.path.dirname(path), None))
        else:
            raise InputError(f"--input {path}: no such file or directory")
    return units


def _has_license_file(d: str) -> bool:
    try:
        names = {n.lower() for n in os.listdir(d)}
    except OSError:
        return False
    return any(n.lower() in names for n in LICENSE_FILE_NAMES)


def _jsonl_units(path: str, split_bytes: int) -> list[tuple]:
    size = os.path.getsize(path) if split_bytes > 0 and path.endswith(".jsonl") else 0
    if size <= split_bytes:
        return [("jsonl", path)]
    return [("jsonl", path, start, min(start + split_bytes, size)) for start in range(0, size, split_bytes)]


def _tree_units(root: str, split_bytes: int = 0) -> list[tuple]:
    root = os.path.abspath(root)
    single_repo = _has_license_file(root)
    units = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        rel_dir = os.path.relpath(dirpath, root)
        if single_repo:
            repo = os.path.basename(root)
        elif rel_dir == ".":
            repo = None
        else:
            repo = rel_dir.split(os.sep)[0]
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            if is_jsonl(full):
                units.extend(_jsonl_units(full, split_bytes))
            elif name.endswith(".ipynb"):
                units.append(("notebook", full, root, repo))
            else:
                units.append(("file", full, root, repo))
    return units


def shard(units: list, rank: int, world_size: int) -> list:
    """A contiguous block per task, so that concatenating the tasks' outputs in rank order keeps input order."""
    n = len(units)
    return units[rank * n // world_size:(rank + 1) * n // world_size]


class CodeReader(BaseReader):
    """Read every --input path (JSONL files, notebooks, source trees) into Documents with provenance.

    Args:
        inputs: paths (files or directories).
        text_key: the JSONL key holding the text.
        notebook_renderer: ``comments`` (code + markdown as comments) or ``markers`` (cell-marker tokens).
        notebook_outputs: keep code cells' text outputs in ``metadata["cells"]`` (and in ``markers`` text).
        max_file_bytes: source files above this are counted (``skipped_too_large``) and not read into memory.
        split_bytes: uncompressed JSONL files above this are read as several units of this many bytes, so the
            tasks share one big file (0: one unit per file).
    """

    name = "code reader"

    def __init__(self, inputs, text_key: str = "text", notebook_renderer: str = "comments",
                 notebook_outputs: bool = False, max_file_bytes: int = 64 << 20, split_bytes: int = 64 << 20,
                 progress: bool = False):
        super().__init__(text_key=text_key)
        if not isinstance(split_bytes, int) or isinstance(split_bytes, bool) or split_bytes < 0:
            raise ValueError(f"split_bytes = {split_bytes!r}: a number of bytes, 0 to never split a JSONL file")
        self.split_bytes = split_bytes
        self._line_at: dict[str, tuple[int, int]] = {}  # path -> (offset of a line start, its line number)
        self.inputs = [os.path.abspath(os.fspath(p)) for p in inputs]
        self.notebook_renderer = notebook_renderer
        self.notebook_outputs = notebook_outputs
        self.max_file_bytes = max_file_bytes
        self.progress = progress
        self._licenses: dict[str, str | None] = {}

    # --- helpers ----------------------------------------------------------------------------------------------
    def _skip(self, reason: str, where: str, why: str = "") -> None:
        self.stat_update(f"skipped_{reason}")
        logger.warning(f"skipped {where}: {reason.replace('_', ' ')}" + (f" ({why})" if why else ""))

    def _repo_license(self, root: str, repo: str | None) -> str | None:
        if repo is None:
            return None
        repo_dir = root if os.path.basename(root) == repo and _has_license_file(root) else os.path.join(root, repo)
        if repo_dir not in self._licenses:
            spdx = None
            try:
                names = sorted(os.listdir(repo_dir))
            except OSError:
                names = []
            wanted = {n.lower() for n in LICENSE_FILE_NAMES}
            for name in names:
                if name.lower() in wanted:
                    try:
                        with open(os.path.join(repo_dir, name), "rb") as f:
                            spdx = detect_license(f.read(65536).decode("utf-8", errors="replace"))
                    except OSError:
                        spdx = None
                    if spdx:
                        break
            self._licenses[repo_dir] = spdx
        return self._licenses[repo_dir]

    def _doc(self, text: str, doc_id: str, metadata: dict) -> Document:
        self.stat_update("documents")
        self.stat_update("bytes", value=len(text.encode("utf-8")))
        return Document(text=text, id=doc_id, metadata=metadata)

    # --- units ------------------------------------------------------------------------------------------------
    def _jsonl_range(self, path: str, start: int, end: int):
        """(line number, raw line) of the non-blank lines starting at a byte offset in [start, end). The line number
        counts the newlines before ``start`` (once per task and file: the next range continues from here)."""
        off, lineno = self._line_at.get(path, (0, 1))
        with open(path, "rb") as f:
            if off <= start:
                f.seek(off)
                remaining = start - off
                while remaining > 0:
                    chunk = f.read(min(remaining, 1 << 24))
                    if not chunk:
                        return
                    lineno += chunk.count(b"\n")
                    remaining -= len(chunk)
                pos = start
                if start > 0:
                    f.seek(start - 1)
                    if f.read(1) != b"\n":  # inside a line: it belongs to the previous range
                        pos += len(f.readline())
                        lineno += 1
            else:  # the previous range ended inside a line that ran past ``start``
                pos = off
            f.seek(pos)
            while pos < end:
                line = f.readline()
                if not line:
                    break
                if line.strip():
                    yield lineno, line
                pos += len(line)
                lineno += 1
        self._line_at[path] = (pos, lineno)

    def _read_jsonl(self, path: str, start: int | None = None, end: int | None = None):
        try:
            lines = iter_jsonl_lines(path) if start is None else self._jsonl_range(path, start, end)
            for lineno, raw in lines:
                where = f"{path}:{lineno}"
                try:
                    obj = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as exc:
                    self._skip("not_utf8", where, f"invalid UTF-8 at byte {exc.start}")
                    continue
                except json.JSONDecodeError as exc:
                    self._skip("invalid_json", where, exc.msg)
                    continue
                if not isinstance(obj, dict):
                    self._skip("invalid_json", where, f"a JSON {type(obj).__name__}, not an object")
                    continue
                text = obj.pop(self.text_key, None)
                if not isinstance(text, str):
                    self._skip("missing_text", where, f"no string {self.text_key!r} key")
                    continue
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    self._skip("not_utf8", where, "unpaired surrogate escape")
                    continue
                if not text:
                    self._skip("empty_text", where)
                    continue
                meta = obj.pop("metadata", None)
                meta = dict(meta) if isinstance(meta, dict) else {}
                for k in PROVENANCE_KEYS:  # top level wins over metadata
                    if k in obj:
                        meta[k] = obj.pop(k)
                meta.update(obj)
                meta["license"] = normalize_spdx(meta.get("license"))
                if not meta.get("language"):
                    meta["language"] = language_of(meta.get("path"))
                meta["source"] = where
                doc_id = str(meta.pop("id", None) or where)
                yield self._doc(text, doc_id, meta)
        except (OSError, EOFError, ValueError) as exc:  # unreadable / truncated .gz / bad .zst frame
            self._skip("unreadable", path, str(exc))

    def _read_bytes(self, path: str) -> bytes | None:
        try:
            size = os.path.getsize(path)
            if size > self.max_file_bytes:
                self._skip("too_large", path, f"{size} bytes > {self.max_file_bytes}")
                return None
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            self._skip("unreadable", path, str(exc))
            return None

    def _read_text(self, path: str) -> str | None:
        """The file as UTF-8 text; None (counted as skipped) when unreadable, too large or not UTF-8."""
        raw = self._read_bytes(path)
        if raw is None:
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self._skip("not_utf8", path, f"invalid UTF-8 at byte {exc.start}")
            return None

    def _provenance(self, path: str, root: str, repo: str | None) -> dict:
        rel = os.path.relpath(path, root)
        in_repo = rel
        if repo is not None and rel.split(os.sep)[0] == repo:
            in_repo = os.path.relpath(path, os.path.join(root, repo))
        return {"path": in_repo.replace(os.sep, "/"), "repo": repo, "license": self._repo_license(root, repo),
                "source": path}

    def _read_file(self, path: str, root: str, repo: str | None):
        language = language_of(path)
        if language is None:
            # Not a source file (README without extension, images, ...): counted, never read.
            self.stat_update("files_unknown_extension")
            return
        text = self._read_text(path)
        if text is None:
            return
        if not text:
            self._skip("empty_text", path)
            return
        meta = self._provenance(path, root, repo)
        meta["language"] = language
        yield self._doc(text, os.path.relpath(path, root).replace(os.sep, "/") if repo is None
                        else f"{repo}/{meta['path']}", meta)

    def _read_notebook(self, path: str, root: str, repo: str | None):
        text = self._read_text(path)
        if text is None:
            return
        cells = parse_notebook(text, outputs=self.notebook_outputs)
        if isinstance(cells, str):
            self._skip("invalid_notebook", path, cells)
            return
        meta = self._provenance(path, root, repo)
        meta["language"] = "python"
        meta["cells"] = cells
        rendered = render_cells(cells, self.notebook_renderer)
        if not rendered.strip():
            self._skip("empty_text", path)
            return
        yield self._doc(rendered, f"{repo}/{meta['path']}" if repo else meta["path"], meta)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        from tqdm import tqdm

        units = shard(list_units(self.inputs, self.split_bytes), rank, world_size)
        for unit in tqdm(units, desc=f"task {rank} reading", unit="file", disable=not self.progress,
                         mininterval=1.0):
            kind = unit[0]
            if kind == "jsonl":
                yield from self._read_jsonl(*unit[1:])
            elif kind == "notebook":
                yield from self._read_notebook(*unit[1:])
            else:
                yield from self._read_file(*unit[1:])


def parse_notebook(text: str, outputs: bool = False) -> list[dict] | str:
    """Cells of a notebook read and validated with nbformat (converted to v4), or the reason it is invalid."""
    import nbformat

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nbformat warns about missing cell ids in old v4 files
            nb = nbformat.reads(text, as_version=4)
            nbformat.validate(nb)
    except Exception as exc:  # noqa: BLE001 - nbformat raises JSON, schema and version errors of many types
        return f"not a valid notebook: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return notebook_cells(nb, outputs=outputs)
