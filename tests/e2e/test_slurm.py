"""A real one-node SLURM on localhost (tools/ci/setup_local_slurm.sh) runs examples/slurm/cpu_tiny.sbatch: 4 srun
tasks that take their ranks from SLURM_*, train the tiny preset as TP 2 x DP 2 with ZeRO-1, and checkpoint.

Skips only where SLURM cannot be installed (the setup script exits 3: not root, no apt-get) or NO_SLURM=1 opts out;
any other setup failure is a test failure."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest

from ._cmd import ROOT, env

# xdist_group: every test that uses the local SLURM runs on one xdist worker (docs/testing.md)
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900), pytest.mark.xdist_group("slurm")]

SETUP = os.path.join(ROOT, "tools", "ci", "setup_local_slurm.sh")
SCRIPT = os.path.join(ROOT, "examples", "slurm", "cpu_tiny.sbatch")
ITERS = 4


@pytest.fixture(scope="module")
def slurm():
    if os.environ.get("NO_SLURM") == "1":  # the opt-out of tools/run_tests.sh: no packages, config or daemons
        pytest.skip("NO_SLURM=1: local SLURM not set up")
    proc = subprocess.run(["bash", SETUP], capture_output=True, text=True, timeout=600)
    if proc.returncode == 3:
        pytest.skip("SLURM cannot be installed here: " + proc.stderr.strip())
    assert proc.returncode == 0, f"setup_local_slurm.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"


def test_sbatch_cpu_tiny_trains_world_4_and_checkpoints(slurm, tmp_path):
    save, log = tmp_path / "ckpt", tmp_path / "job.out"
    name = f"mc-test-{os.getpid()}-{tmp_path.name}"  # unique, so a timed-out job can be cancelled by name
    cmd = ["sbatch", "--wait", f"--job-name={name}", f"--output={log}", "--time=15", f"--chdir={ROOT}",
           f"--export=ALL,SAVE={save},ITERS={ITERS},PYTHON={sys.executable}", SCRIPT]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=840)
    except subprocess.TimeoutExpired:
        subprocess.run(["scancel", f"--name={name}"], timeout=60)
        raise
    text = log.read_text() if log.exists() else "(no job log)"
    assert proc.returncode == 0, f"job failed ({proc.returncode}): {proc.stdout}{proc.stderr}\n--- log\n{text[-6000:]}"
    assert re.search(r"Submitted batch job \d+", proc.stdout)

    # The tasks built the layout from SLURM_PROCID/SLURM_NTASKS (none of RANK/WORLD_SIZE
    # reaches the job: env() removes them).
    layouts = re.findall(r"world (\d+) = TP (\d+) x PP (\d+) x DP (\d+)", text)
    assert layouts and set(layouts) == {("4", "2", "1", "2")}, text[-4000:]
    # Megatron-LM's log line, one per iteration on rank 0 (training/metrics.py)
    iters = [int(m) for m in re.findall(rf"\] iteration +(\d+)/ +{ITERS} \|.* \| lm loss: [0-9.E+-]+ \|", text)]
    assert iters == list(range(1, ITERS + 1)), text[-4000:]

    assert (save / "latest").read_text().strip() == f"iter_{ITERS:07d}"
    ckpt = save / f"iter_{ITERS:07d}"
    files = sorted(os.listdir(ckpt))
    # TP 2: one model file per tensor-parallel rank; ZeRO-1 at DP 2 x TP 2: one optimizer shard per rank (4).
    assert sum(f.startswith("mp_rank_") and f.endswith("model_states.pt") for f in files) == 2, files
    assert sum(f.endswith("optim_states.pt") for f in files) == 4, files
    records = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(losses) == ITERS and all(math.isfinite(x) and 0 < x < 10 for x in losses), losses
