"""The README's "Curate a corpus" commands, run as written (paths under data/ moved to a temporary directory)."""

from __future__ import annotations

import json
import os
import re

import pytest

from .conftest import REPO, run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def readme_commands() -> list[list[str]]:
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    section = text.split("### Curate a corpus", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split() for line in block.strip().splitlines()]


def test_readme_curate_section_runs(tmp_path):
    cmds = readme_commands()
    assert [c[:2] for c in cmds] == [["python", "tools/prepare_stdlib_corpus.py"], ["python", "tools/curate_corpus.py"]]
    for cmd in cmds:
        args = [a.replace("data/", f"{tmp_path}/data/") for a in cmd[1:]]
        p = run(args + (["--no-progress"] if "curate_corpus" in args[0] else []), timeout=1500)
    report = json.loads((tmp_path / "data" / "curated" / "report.json").read_text())
    assert report["pipeline"] == "study" and report["written"]["docs"] > 1000
    assert [r["step"] for r in report["steps"]] == ["language", "quality", "exact_dedup", "near_dedup"]
    assert "written:" in p.stdout
