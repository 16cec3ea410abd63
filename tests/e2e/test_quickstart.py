"""The README's first command, end to end: corpus -> tokenizer -> .bin/.idx -> training -> validation loss falls by
at least 40% on held-out standard-library files -> a generated sample."""

import os
import subprocess

import pytest

from ._cmd import ROOT, env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_quickstart_learns(tmp_path):
    e = env()
    # The README command runs alone with every core: so does this test when pytest runs one test at a time, and
    # then it does not inherit the suite's one OpenMP thread (that halves training speed on 2 cores). Under
    # pytest-xdist the other workers already keep the other cores busy; more threads than cores only contend.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    # 100 iterations (the script's own knob ITERS; the README command runs 300): the validation loss falls 46.9%
    # (9.0447 -> 4.8044, measured 2026-12-06 with these settings; the run is deterministic), over the 40% the
    # script requires. QUICKSTART_ITERS overrides it (docs/testing.md).
    e.update(SKIP_INSTALL="1", WORK=str(tmp_path / "qs"), ITERS=os.environ.get("QUICKSTART_ITERS", "100"),
             TOKENIZER_CHARS="3000000", OMP_NUM_THREADS=str(max(1, min(4, os.cpu_count() or 1) // workers)))
    proc = subprocess.run(["bash", os.path.join(ROOT, "examples", "quickstart_cpu.sh")], cwd=ROOT, env=e,
                          capture_output=True, text=True, timeout=3000)
    out = proc.stdout
    assert proc.returncode == 0, f"{out[-3000:]}\n{proc.stderr[-3000:]}"
    assert "validation loss fell" in out  # summarize_run enforces the 40% drop (--min-drop 0.4)
    assert "== done." in out
    sample = out.split("greedy decoding of a model this small loops):")[1].split("== done.")[0]
    assert len(sample.strip()) > len("def read_lines(path):")  # the model wrote something after the prompt
    # The closing hint, run as printed: --load alone resumes with the run's saved config and trains further.
    resume = next(line for line in out.splitlines() if line.startswith("== resume: ")).removeprefix("== resume: ")
    proc = subprocess.run(["bash", "-c", resume], cwd=ROOT, env=e, capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, f"{resume}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    save = resume.split("--load ")[1].split()[0]
    iters = int(e["ITERS"])
    assert f"resumed from {save} at iteration {iters}" in proc.stdout, proc.stdout[-3000:]
    with open(os.path.join(ROOT, save, "latest")) as f:  # (an absolute save stays itself)
        assert f.read().strip() == f"iter_{iters + 20:07d}"
