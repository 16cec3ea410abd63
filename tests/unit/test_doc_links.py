"""The repository is self-contained: every relative link in README.md, NOTES.md, BENCHMARKS.md and docs/*.md
points at a file or directory inside the repository (a fresh clone has nothing beside it), and no document sends
the reader to a path outside it."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target)
CODE_PATH = re.compile(r"`(\.\./[^`]*)`")  # `../somewhere` written as code


def documents() -> list[Path]:
    docs = [ROOT / "README.md", ROOT / "NOTES.md", ROOT / "BENCHMARKS.md"]
    return [p for p in docs if p.exists()] + sorted((ROOT / "docs").glob("*.md"))


def relative_links(path: Path) -> list[str]:
    targets = LINK.findall(path.read_text())
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_every_relative_link_resolves_inside_the_repository():
    assert (ROOT / "docs").is_dir() and (ROOT / "docs" / "architecture.md").exists()
    broken = []
    for doc in documents():
        for target in relative_links(doc):
            resolved = (doc.parent / target.split("#")[0]).resolve()
            if not resolved.exists() or ROOT not in (resolved, *resolved.parents):
                broken.append(f"{doc.relative_to(ROOT)}: ({target})")
    assert not broken, "links that do not resolve inside the repository:\n" + "\n".join(broken)


def test_no_document_points_outside_the_repository():
    outside = [f"{doc.relative_to(ROOT)}: {m}" for doc in documents() for m in CODE_PATH.findall(doc.read_text())]
    assert not outside, "paths outside the repository:\n" + "\n".join(outside)


def test_the_link_checker_sees_links():
    sample = ROOT / "docs" / "architecture.md"
    assert "formats.md" in relative_links(sample)
