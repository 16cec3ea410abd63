"""Corpus readers: JSONL (plain/.gz/.zst), source trees, Jupyter notebooks, and the embedded stdlib corpus.

Every reader yields dicts whose ``"text"`` (or the requested JSON keys) is a ``str``. Bad input is reported with
the file and line (``file:line: why``); ``skip_bad_lines`` skips and counts instead (count in ``stats``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import sysconfig
from typing import Iterator

from ..errors import UserError
from ..utils import atomic

LANGUAGES = {
    ".py": "python", ".pyi": "python", ".ipynb": "python", ".c": "c", ".h": "c", ".cc": "c++", ".cpp": "c++",
    ".cxx": "c++", ".hpp": "c++", ".hh": "c++", ".cu": "cuda", ".java": "java", ".js": "javascript",
    ".mjs": "javascript", ".ts": "typescript", ".tsx": "typescript", ".go": "go", ".rs": "rust", ".rb": "ruby",
    ".php": "php", ".cs": "c#", ".scala": "scala", ".kt": "kotlin", ".swift": "swift", ".sh": "shell",
    ".bash": "shell", ".lua": "lua", ".r": "r", ".jl": "julia", ".m": "objective-c", ".pl": "perl",
    ".sql": "sql", ".html": "html", ".css": "css", ".md": "markdown", ".rst": "restructuredtext",
    ".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".json": "json", ".f90": "fortran", ".hs": "haskell",
}


class CorpusError(UserError, ValueError):
    """Bad input data; the message names the file (and line) and the fix."""


def open_text_lines(path: str):
    """Binary line iterator over a .jsonl / .jsonl.gz / .jsonl.zst file (decompressing on the fly)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"input file not found: {path}")
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".zst") or path.endswith(".zstd"):
        return io.BufferedReader(_ZstdFrames(path), buffer_size=1 << 20)
    return open(path, "rb")


class _ZstdFrames(io.RawIOBase):
    """Decompressed bytes of every frame of a .zst file. zstandard's stream_reader ends quietly at a truncated
    frame (measured: half of a file read as its first half, no error); here a file ending inside a frame raises
    EOFError, which iter_jsonl_lines reports with the file's name."""

    def __init__(self, path: str):
        import zstandard

        self._new = zstandard.ZstdDecompressor().decompressobj
        self._raw = open(path, "rb")
        self._obj = self._new()
        self._in_frame = False
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        while not self._pending:
            chunk = self._raw.read(1 << 20)
            if not chunk:
                if self._in_frame:
                    raise EOFError("the file ends inside a zstd frame (truncated)")
                return 0
            out = []
            while chunk:
                self._in_frame = True
                out.append(self._obj.decompress(chunk))
                if not self._obj.eof:
                    break
                chunk, self._obj, self._in_frame = self._obj.unused_data, self._new(), False
            self._pending = b"".join(out)
        n = min(len(buf), len(self._pending))
        buf[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


def iter_jsonl_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw line bytes) for every non-blank line. A corrupt or truncated compressed file is
    a CorpusError naming the file and the last good line (gzip/zstd raise their own errors without the name)."""
    lineno = 0
    try:
        with open_text_lines(path) as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield lineno, line
    except FileNotFoundError:
        raise
    except (EOFError, OSError, ValueError) as exc:  # gzip.BadGzipFile, zlib.error, zstandard.ZstdError, EOF
        if isinstance(exc, CorpusError) or not _decompression_error(exc):
            raise
        kind = "gzip" if path.endswith(".gz") else "zstd" if path.endswith((".zst", ".zstd")) else "input"
        where = f"after line {lineno}" if lineno else "at its start"
        raise CorpusError(f"{path}: corrupt or truncated {kind} file, unreadable {where} ({type(exc).__name__}: "
                          f"{exc}); re-download or re-compress it, or leave it out of --input") from None


def _decompression_error(exc: BaseException) -> bool:
    import zlib
    if isinstance(exc, (EOFError, gzip.BadGzipFile, zlib.error)):
        return True
    try:
        import zstandard
        return isinstance(exc, zstandard.ZstdError)
    except ImportError:
        return False


def parse_jsonl_line(line: bytes, lineno: int, path: str, json_keys=("text",)) -> dict:
    """One JSONL line -> ``{key: str}`` for ``json_keys``; raises CorpusError naming ``path:lineno``."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path}:{lineno}: invalid UTF-8 at byte {exc.start} (re-encode the file as UTF-8, or "
                          f"pass --skip-bad-lines)") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno}); fix the line or "
                          f"pass --skip-bad-lines") from None
    if not isinstance(obj, dict):
        raise CorpusError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
    out = {}
    for key in json_keys:
        if key not in obj:
            raise CorpusError(f"{path}:{lineno}: missing key {key!r} (keys present: {sorted(obj)[:8]}); choose "
                              f"the key with --json-keys or pass --skip-bad-lines")
        value = obj[key]
        if not isinstance(value, str):
            raise CorpusError(f"{path}:{lineno}: key {key!r} holds {type(value).__name__}, expected a string")
        if _has_lone_surrogate(value):
            raise CorpusError(f"{path}:{lineno}: key {key!r} holds an unpaired surrogate escape (invalid "
                              f"UTF-8 text); fix the line or pass --skip-bad-lines")
        out[key] = value
    return out


def _has_lone_surrogate(s: str) -> bool:
    try:
        s.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def iter_jsonl(path, json_keys=("text",), skip_bad_lines: bool = False, stats: dict | None = None) -> Iterator[dict]:
    """Documents of a JSONL file as ``{key: str}``. With ``skip_bad_lines`` bad lines are skipped and counted
    in ``stats["bad_lines"]``; otherwise the first bad line raises CorpusError (``file:line: why``)."""
    path = os.fspath(path)
    if stats is not None:
        stats.setdefault("bad_lines", 0)
    for lineno, line in iter_jsonl_lines(path):
        try:
            yield parse_jsonl_line(line, lineno, path, json_keys)
        except CorpusError:
            if not skip_bad_lines:
                raise
            if stats is not None:
                stats["bad_lines"] += 1


def notebook_cells(nb_json: dict, outputs: bool = False) -> list[dict]:
    """The cells of a notebook (nbformat 3 or 4 JSON) in order: ``{"type", "source"}`` (+ ``"outputs"``: the text
    of stream / text-plain outputs, when ``outputs``)."""
    if not isinstance(nb_json, dict) or "cells" not in nb_json:
        # nbformat 3 kept cells under worksheets
        raw = [c for ws in (nb_json or {}).get("worksheets", []) for c in ws.get("cells", [])]
    else:
        raw = nb_json["cells"]
    cells = []
    for cell in raw:
        src = cell.get("source", cell.get("input", ""))
        if isinstance(src, list):
            src = "".join(src)
        out = {"type": cell.get("cell_type"), "source": src}
        if outputs and cell.get("cell_type") == "code":
            texts = []
            for o in cell.get("outputs", []) or []:
                t = o.get("text") if o.get("output_type") == "stream" else (o.get("data") or {}).get("text/plain")
                if t is not None:
                    texts.append("".join(t) if isinstance(t, list) else str(t))
            out["outputs"] = texts
        cells.append(out)
    return cells


# Cell-marker tokens for the "markers" renderer (the Jupyter tokens of StarCoder's tokenizer, Li et al. 2023).
NOTEBOOK_MARKERS = {"start": "<jupyter_start>", "markdown": "<jupyter_text>", "code": "<jupyter_code>",
                    "output": "<jupyter_output>"}


def render_cells(cells: list[dict], style: str = "comments") -> str:
    """Notebook cells as one training text.

    ``comments``: one Python file, code cells in order and markdown/raw cells as ``#`` comments (outputs skipped);
    ``markers``: every cell after its cell-marker token (NOTEBOOK_MARKERS), outputs after ``<jupyter_output>``."""
    if style == "markers":
        parts = [NOTEBOOK_MARKERS["start"]]
        for cell in cells:
            kind = "code" if cell["type"] == "code" else "markdown"
            parts.append(NOTEBOOK_MARKERS[kind] + cell["source"])
            for out in cell.get("outputs", ()):
                parts.append(NOTEBOOK_MARKERS["output"] + out)
        return "".join(parts)
    if style != "comments":
        raise ValueError(f"notebook renderer {style!r}: use 'comments' or 'markers'")
    chunks = []
    for cell in cells:
        src = cell["source"].rstrip("\n")
        if not src.strip():
            continue
        kind = cell["type"]
        if kind == "code":
            chunks.append(src)
        elif kind in ("markdown", "raw", "heading"):
            chunks.append("\n".join(("# " + line) if line else "#" for line in src.split("\n")))
    return "\n\n".join(chunks) + ("\n" if chunks else "")


def notebook_to_text(nb_json: dict) -> str:
    """A notebook as one Python file: code cells in order, markdown cells as ``#`` comments, outputs skipped
    (the ``comments`` renderer of :func:`render_cells`)."""
    return render_cells(notebook_cells(nb_json), "comments")


def iter_source_tree(root, extensions=None, skip_bad_files: bool = False, stats: dict | None = None,
                     exclude_dirs=()) -> Iterator[dict]:
    """Source files under ``root`` in sorted path order: ``{"text", "path" (relative), "language", "size"}``.

    ``extensions``: e.g. ``[".py", ".ipynb"]`` (default: every extension in LANGUAGES). Notebooks are converted
    with :func:`notebook_to_text`. Files that are not UTF-8 raise CorpusError unless ``skip_bad_files``
    (then counted in ``stats["bad_files"]``). Directories named in ``exclude_dirs`` (any depth) are skipped.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"source directory not found: {root}")
    exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in (extensions or LANGUAGES)}
    if stats is not None:
        stats.setdefault("bad_files", 0)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames
                             if not d.startswith(".") and d != "__pycache__" and d not in exclude_dirs)
        for name in sorted(filenames):
            ext = os.path.splitext(name)[1].lower()
            if ext not in exts:
                continue
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            try:
                text = _read_source(full, ext)
            except CorpusError:
                if not skip_bad_files:
                    raise
                if stats is not None:
                    stats["bad_files"] += 1
                continue
            yield {"text": text, "path": rel.replace(os.sep, "/"), "language": LANGUAGES.get(ext, ext[1:]),
                   "size": os.path.getsize(full)}


def _read_source(path: str, ext: str) -> str:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path}: invalid UTF-8 at byte {exc.start} (re-encode it, or pass --skip-bad-lines "
                          f"to skip such files)") from None
    if ext == ".ipynb":
        try:
            return notebook_to_text(json.loads(text))
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{path}: not a valid notebook ({exc.msg} at line {exc.lineno})") from None
    return text


def stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def _split_of(rel_path: str, seed: int, valid_fraction: float, test_fraction: float) -> str:
    # File-level split from a hash of (seed, path): deterministic, independent of file order and of other files.
    h = hashlib.sha256(f"{seed}:{rel_path}".encode()).digest()
    u = int.from_bytes(h[:8], "little") / 2.0 ** 64
    if u < test_fraction:
        return "test"
    if u < test_fraction + valid_fraction:
        return "valid"
    return "train"


def build_stdlib_corpus(output_dir, seed: int = 1234, valid_fraction: float = 0.02,
                        test_fraction: float = 0.02, root: str | None = None) -> dict[str, str]:
    """Write ``train/valid/test.jsonl`` of this machine's Python standard library ``.py`` files (not
    site-packages; files that are not UTF-8 are skipped). Each line: ``{"text", "path", "language", "size"}``.
    Returns ``{"train": path, "valid": path, "test": path}``."""
    if not (0 <= valid_fraction < 1 and 0 <= test_fraction < 1 and valid_fraction + test_fraction < 1):
        raise CorpusError(f"valid_fraction {valid_fraction} + test_fraction {test_fraction} must be in [0, 1)")
    root = root or stdlib_root()
    os.makedirs(output_dir, exist_ok=True)
    paths = {s: os.path.join(output_dir, f"{s}.jsonl") for s in ("train", "valid", "test")}
    tmp = {s: atomic.tmp_path(p) for s, p in paths.items()}
    files = {s: open(p, "w", encoding="utf-8") for s, p in tmp.items()}
    try:
        for doc in _iter_stdlib(root):
            split = _split_of(doc["path"], seed, valid_fraction, test_fraction)
            files[split].write(json.dumps(doc, ensure_ascii=False) + "\n")
        for f in files.values():
            f.close()
        for s in paths:
            atomic.replace(tmp[s], paths[s])
    finally:
        for s, f in files.items():
            f.close()
            if os.path.exists(tmp[s]):
                os.remove(tmp[s])
    return paths


def _iter_stdlib(root: str) -> Iterator[dict]:
    yield from iter_source_tree(root, extensions=[".py"], skip_bad_files=True,
                                exclude_dirs=("site-packages", "dist-packages"))
