"""Language selection by file extension.

PaLM (Chowdhery et al. 2022, section 3) kept GitHub files "by filename extension to restrict to one of 24 common
programming languages, including Java, HTML, Javascript, Python, PHP, C#, XML, C++, and C". The paper's text names
only those nine; the other fifteen of ``PALM_LANGUAGES`` are our choice of the next most common GitHub languages
(any list is configurable: ``languages: [python, go]`` in a pipeline file).
"""

from __future__ import annotations

import os

from megatron_code.data.corpus import LANGUAGES as _BASE

# Extension -> language name. The project's corpus readers' table plus the extensions PaLM's named languages need.
EXTENSIONS: dict[str, str] = dict(_BASE)
EXTENSIONS.update({
    ".xml": "xml", ".xsd": "xml", ".xsl": "xml", ".htm": "html", ".xhtml": "html", ".jsx": "javascript",
    ".cjs": "javascript", ".hxx": "c++", ".c++": "c++", ".h++": "c++", ".ipp": "c++", ".kts": "kotlin",
    ".mm": "objective-c", ".pm": "perl", ".zsh": "shell", ".scss": "css", ".less": "css", ".markdown": "markdown",
    ".phtml": "php", ".rake": "ruby", ".sc": "scala", ".hpp": "c++", ".ipynb": "python",
})

PALM_LANGUAGES: tuple[str, ...] = (
    # named in PaLM section 3
    "java", "html", "javascript", "python", "php", "c#", "xml", "c++", "c",
    # ours, to make 24 (see the module docstring)
    "go", "ruby", "typescript", "shell", "css", "swift", "kotlin", "rust", "scala", "objective-c", "perl", "lua",
    "sql", "r", "markdown",
)

NAMED_LISTS = {"palm": PALM_LANGUAGES, "python": ("python",)}


def language_of(path: str | None) -> str | None:
    """The language of a file by its extension (case-insensitive), or None when the extension is unknown."""
    if not path:
        return None
    ext = os.path.splitext(path)[1].lower()
    return EXTENSIONS.get(ext)


def resolve_languages(spec) -> frozenset[str] | None:
    """``"palm"`` / ``["python", "go"]`` / None (every language) -> a set of language names."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec not in NAMED_LISTS:
            raise ValueError(f"languages: unknown list {spec!r}; use one of {sorted(NAMED_LISTS)} or a list of "
                             f"language names such as [python, go]")
        return frozenset(NAMED_LISTS[spec])
    known = set(EXTENSIONS.values())
    names = [str(s).lower() for s in spec]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"languages: {unknown} are not languages we map extensions to; known: {sorted(known)}")
    return frozenset(names)
