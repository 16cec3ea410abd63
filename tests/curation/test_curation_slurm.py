"""The same pipeline through datatrove's SLURM executor, on the local one-node SLURM the suite starts
(tools/ci/setup_local_slurm.sh), writes byte-identical bins and the same documents as the local executor.

Skips only where SLURM cannot be installed (the setup script exits 3)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import textwrap

import pytest

from .conftest import REPO, run

# xdist_group: every test that uses the local SLURM runs on one xdist worker (docs/testing.md)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800), pytest.mark.xdist_group("slurm")]
STDLIB = os.path.dirname(textwrap.__file__)


@pytest.fixture(scope="module")
def slurm():
    proc = subprocess.run(["bash", os.path.join(REPO, "tools", "ci", "setup_local_slurm.sh")], capture_output=True,
                          text=True, timeout=600)
    if proc.returncode == 3:
        pytest.skip("SLURM cannot be installed here: " + proc.stderr.strip())
    assert proc.returncode == 0, f"setup_local_slurm.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"


def texts(out) -> list[str]:
    docs = []
    for name in sorted(os.listdir(out / "data")):
        with gzip.open(out / "data" / name, "rt") as f:
            docs += [(name, json.loads(line)["id"]) for line in f]
    return docs


def test_slurm_executor_matches_local(slurm, tmp_path):
    from megatron_code.data.tokenizer import train_code_tokenizer

    src = tmp_path / "in.jsonl"
    names = ["textwrap.py", "heapq.py", "bisect.py", "copy.py", "glob.py", "fnmatch.py", "shlex.py", "string.py"]
    rows = [{"text": open(os.path.join(STDLIB, n), encoding="utf-8").read(), "path": n, "id": n} for n in names]
    rows.append({"text": rows[1]["text"], "path": "dup.py", "id": "dup"})
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = tmp_path / "tok"
    train_code_tokenizer([os.path.join(STDLIB, n) for n in names[:2]], 400, str(tok))
    common = ["tools/curate_corpus.py", "--input", str(src), "--pipeline", "study", "--tasks", "3", "--no-progress",
              "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(tok), "--append-eod"]
    run(common + ["--output", str(tmp_path / "local")])
    # the node of the test cluster declares 1 MB of memory (setup_local_slurm.sh): ask for no more
    run(common + ["--output", str(tmp_path / "slurm"), "--executor", "slurm", "--slurm-mem-per-cpu", "1M"])
    for ext in (".bin", ".idx"):
        a = (tmp_path / "local" / f"corpus_text_document{ext}").read_bytes()
        b = (tmp_path / "slurm" / f"corpus_text_document{ext}").read_bytes()
        assert a == b and len(a) > 0
    assert texts(tmp_path / "local") == texts(tmp_path / "slurm")
    rl = json.loads((tmp_path / "local" / "report.json").read_text())
    rs = json.loads((tmp_path / "slurm" / "report.json").read_text())
    assert rl["steps"] == rs["steps"] and rl["written"] == rs["written"] and rl["written"]["docs"] == 8
    # every stage ran as SLURM jobs (datatrove's launch scripts and completion records)
    for stage in ("filter", "exact_find", "dedup_prepare", "buckets", "clusters", "write"):
        assert (tmp_path / "slurm" / "logs" / stage / "launch_script.slurm").exists()
