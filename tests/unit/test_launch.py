"""launch_environment: RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* derived from torchrun/deepspeed, srun steps, or nothing."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

import pytest

from megatron_code.parallel import engine
from megatron_code.parallel.engine import _first_slurm_host, launch_environment

KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def srun_task(procid: int, ntasks: int = 8, localid: int | None = None, job: str = "4242", step: str = "0",
              nodelist: str = "node[07-08]") -> dict[str, str]:
    """The SLURM variables srun gives one task of a step (as observed from Debian's slurm 22.05)."""
    return {"SLURM_PROCID": str(procid), "SLURM_NTASKS": str(ntasks), "SLURM_NPROCS": str(ntasks),
            "SLURM_LOCALID": str(procid % 4 if localid is None else localid), "SLURM_JOB_ID": job,
            "SLURM_STEP_ID": step, "SLURM_JOB_NODELIST": nodelist}


@pytest.fixture
def no_scontrol(monkeypatch):
    """Force the built-in nodelist parser (scontrol missing), so results do not depend on the machine."""
    def missing(*_a, **_k):
        raise FileNotFoundError("scontrol")
    monkeypatch.setattr(engine.subprocess, "run", missing)


def test_torchrun_variables_are_kept_and_completed():
    env = {"RANK": "5", "WORLD_SIZE": "6", "LOCAL_RANK": "1", "MASTER_ADDR": "10.1.2.3", "MASTER_PORT": "1234"}
    assert launch_environment(env) == env
    env = {"RANK": "2", "WORLD_SIZE": "4"}
    out = launch_environment(env)
    assert out == {"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": "29500"}
    assert env == out  # filled in place: torch.distributed reads them from the environment


def test_torchrun_inside_a_slurm_step_wins_over_slurm(no_scontrol):
    # `srun -n 1 torchrun --nproc_per_node 8 ...`: torchrun's RANK is the process's rank, not SLURM_PROCID.
    env = {**srun_task(0, ntasks=1), "RANK": "6", "WORLD_SIZE": "8", "LOCAL_RANK": "6", "MASTER_PORT": "29501"}
    out = launch_environment(env)
    assert (out["RANK"], out["WORLD_SIZE"], out["LOCAL_RANK"], out["MASTER_PORT"]) == ("6", "8", "6", "29501")


def test_srun_tasks_get_ranks_and_agree_on_the_master(no_scontrol):
    outs = [launch_environment(srun_task(i)) for i in range(8)]
    assert [o["RANK"] for o in outs] == [str(i) for i in range(8)]
    assert {o["WORLD_SIZE"] for o in outs} == {"8"}
    assert [o["LOCAL_RANK"] for o in outs] == ["0", "1", "2", "3"] * 2
    assert {o["MASTER_ADDR"] for o in outs} == {"node07"}  # first host of the allocation
    ports = {o["MASTER_PORT"] for o in outs}
    assert len(ports) == 1 and 20000 <= int(ports.pop()) < 40000


def test_srun_steps_of_one_job_use_different_ports_and_user_values_win(no_scontrol):
    ports = {launch_environment(srun_task(0, step=str(s)))["MASTER_PORT"] for s in range(5)}
    assert len(ports) == 5
    other_job = launch_environment(srun_task(0, job="4243"))["MASTER_PORT"]
    assert other_job != launch_environment(srun_task(0, job="4242"))["MASTER_PORT"]
    env = {**srun_task(3), "MASTER_ADDR": "head.example", "MASTER_PORT": "6000"}
    out = launch_environment(env)
    assert (out["RANK"], out["MASTER_ADDR"], out["MASTER_PORT"]) == ("3", "head.example", "6000")


def test_legacy_stepid_variable_is_accepted(no_scontrol):
    env = srun_task(1, ntasks=2)
    env["SLURM_STEPID"] = env.pop("SLURM_STEP_ID")
    assert launch_environment(env)["WORLD_SIZE"] == "2"


def test_batch_script_without_srun_is_one_process():
    # An sbatch script's own shell has SLURM_PROCID=0 and SLURM_NTASKS=4 but no step: `python pretrain_code.py`
    # there must not wait for 3 peers that will never come.
    env = srun_task(0, ntasks=4)
    del env["SLURM_STEP_ID"]
    out = launch_environment(env)
    assert (out["RANK"], out["WORLD_SIZE"], out["LOCAL_RANK"]) == ("0", "1", "0")


def test_plain_python_is_world_one_on_a_free_local_port():
    out = launch_environment({})
    assert (out["RANK"], out["WORLD_SIZE"], out["LOCAL_RANK"], out["MASTER_ADDR"]) == ("0", "1", "0", "127.0.0.1")
    with socket.socket() as s:  # the chosen port is bindable right now
        s.bind(("127.0.0.1", int(out["MASTER_PORT"])))


def test_default_is_the_process_environment(monkeypatch, no_scontrol):
    for k in KEYS:
        # set first: monkeypatch only undoes a delenv of a variable that existed, and launch_environment() writes
        # RANK=2 WORLD_SIZE=4 into this process's environment, which would leak into later tests (an in-process
        # init_distributed then waits for 3 peers that never come)
        monkeypatch.setenv(k, "")
        monkeypatch.delenv(k)
    for k, v in srun_task(2, ntasks=4).items():
        monkeypatch.setenv(k, v)
    out = launch_environment()
    assert {k: os.environ[k] for k in KEYS} == out
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"]) == ("2", "4")


@pytest.mark.parametrize("nodelist, first", [
    ("node[01-04,07],gpu3", "node01"), ("gpu3,node[1-2]", "gpu3"), ("vm", "vm"), ("a-b[9]", "a-b9"),
    ("rack1-n[003,010-012]", "rack1-n003"), ("10.0.0.5", "10.0.0.5"),
])
def test_first_slurm_host_without_scontrol(no_scontrol, nodelist, first):
    assert _first_slurm_host(nodelist) == first


@pytest.mark.skipif(shutil.which("scontrol") is None, reason="scontrol not installed (SLURM client tools)")
@pytest.mark.parametrize("nodelist", ["node[01-04,07],gpu3", "gpu3,node[1-2]", "rack1-n[003,010-012]"])
def test_first_slurm_host_agrees_with_scontrol(nodelist):
    expanded = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                              check=True).stdout.split()
    assert _first_slurm_host(nodelist) == expanded[0]
