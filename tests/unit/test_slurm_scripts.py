"""examples/slurm/*.sbatch stay runnable: each GPU script's command (DRY_RUN=1) parses with our CLI, its layout
divides the GPUs its #SBATCH lines ask for, and the config validates (heads, d_ff and vocabulary split over TP,
global batch = micro x DP x accumulation). The CPU script really runs in tests/e2e/test_slurm.py."""

from __future__ import annotations

import glob
import os
import re
import shlex
import subprocess

import pytest

from megatron_code.config.cli import parse_args

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SLURM_DIR = os.path.join(ROOT, "examples", "slurm")
GPU_SCRIPTS = {"phi1_8x8.sbatch": ("phi-1", 1, 1, 64), "palm540b_tp8_pp16.sbatch": ("palm-540b", 8, 16, 16),
               "democratize6b_4x8.sbatch": ("democratize-6b", 2, 1, 16)}


def sbatch_tasks(path: str) -> int:
    """Tasks the script's own #SBATCH lines request (nodes x ntasks-per-node)."""
    text = open(path).read()
    nodes = int(re.search(r"^#SBATCH --nodes=(\d+)", text, re.M).group(1))
    per_node = int(re.search(r"^#SBATCH --ntasks-per-node=(\d+)", text, re.M).group(1))
    return nodes * per_node


def dry_run(path: str, tasks: int, **extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(DRY_RUN="1", DATA_PREFIX="/data/x_text_document", TOKENIZER="/data/tok", REPO=ROOT,
               SLURM_NTASKS=str(tasks), **extra)
    return subprocess.run(["bash", path], env=env, capture_output=True, text=True, timeout=60)


def test_every_script_is_valid_bash():
    scripts = sorted(glob.glob(os.path.join(SLURM_DIR, "*.sbatch")))
    assert {os.path.basename(s) for s in scripts} >= set(GPU_SCRIPTS) | {"cpu_tiny.sbatch"}
    for s in scripts:
        proc = subprocess.run(["bash", "-n", s], capture_output=True, text=True)
        assert proc.returncode == 0, (s, proc.stderr)


@pytest.mark.parametrize("name", sorted(GPU_SCRIPTS))
def test_gpu_script_layout_parses_and_validates(name):
    preset, tp, pp, dp = GPU_SCRIPTS[name]
    path = os.path.join(SLURM_DIR, name)
    tasks = sbatch_tasks(path)
    assert tasks == tp * pp * dp
    proc = dry_run(path, tasks)
    assert proc.returncode == 0, proc.stderr
    assert f"= TP {tp} x PP {pp} x DP {dp}" in proc.stdout
    cmd = shlex.split(proc.stdout.strip().splitlines()[-1])
    assert cmd[:2] == ["srun", "--kill-on-bad-exit=1"]
    argv = cmd[cmd.index("pretrain_code.py") + 1:]
    job = parse_args(argv).job
    assert argv[argv.index("--preset") + 1] == preset
    assert (job.parallel.tensor_parallel, job.parallel.pipeline_parallel) == (tp, pp)
    assert job.parallel.zero_stage == 1 and job.training.precision == "bf16"
    job.validate()  # TP divides heads, d_ff and the padded vocabulary; ZeRO-1 is allowed with PP
    accumulation = job.resolve_batch(dp)
    assert job.training.micro_batch_size * dp * accumulation == job.training.global_batch_size
    assert job.training.train_iters > 0


def test_layout_that_does_not_divide_is_refused_before_srun():
    proc = dry_run(os.path.join(SLURM_DIR, "palm540b_tp8_pp16.sbatch"), 100)
    assert proc.returncode == 2 and "do not split into TP 8 x PP 16" in proc.stderr
    assert "srun" not in proc.stdout


def test_missing_data_is_named():
    path = os.path.join(SLURM_DIR, "phi1_8x8.sbatch")
    env = {k: v for k, v in os.environ.items() if k not in ("DATA_PREFIX", "TOKENIZER")}
    proc = subprocess.run(["bash", path], env={**env, "DRY_RUN": "1", "REPO": ROOT}, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0 and "DATA_PREFIX" in proc.stderr


def test_deepspeed_multinode_example_parses_and_matches_its_hostfile():
    script = os.path.join(ROOT, "examples", "deepspeed_multinode.sh")
    hostfile = os.path.join(ROOT, "examples", "hostfile.example")
    slots = [int(m) for m in re.findall(r"^\S+\s+slots=(\d+)\s*$", open(hostfile).read(), re.M)]
    assert len(slots) == 8 and sum(slots) == 64
    base = {k: v for k, v in os.environ.items() if k not in ("NODE_RANK", "MASTER_ADDR", "MASTER_PORT")}
    base.update(DRY_RUN="1", DATA_PREFIX="/data/x_text_document", TOKENIZER="/data/tok")
    for extra, no_ssh in (({}, False), ({"NODE_RANK": "3"}, True)):
        proc = subprocess.run(["bash", script], env={**base, **extra}, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        cmd = shlex.split(proc.stdout.strip().splitlines()[-1])
        launcher = cmd[:cmd.index("pretrain_code.py")]
        assert launcher[0] == "deepspeed" and launcher[launcher.index("--hostfile") + 1] == "examples/hostfile.example"
        assert launcher[launcher.index("--master_addr") + 1] == "gpu-node01"  # the hostfile's first host
        assert ("--no_ssh" in launcher) == no_ssh and (launcher[-1] == "3") == no_ssh
        job = parse_args(cmd[cmd.index("pretrain_code.py") + 1:]).job
        job.validate()
        dp = sum(slots) // (job.parallel.tensor_parallel * job.parallel.pipeline_parallel)
        assert job.training.global_batch_size % (job.training.micro_batch_size * dp) == 0
