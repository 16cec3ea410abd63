"""Hung and orphaned ranks (issue 14, finding 5), under `torchrun` as a user launches it:

- SIGSTOP one of 4 gloo ranks mid-training: every other rank names it (rank and host/pid) in one line and exits
  within --distributed-timeout-minutes (the heartbeat's bound is half of it), torchrun then reaps the stopped one;
  before, the others blocked silently for the 30-minute gloo default.
- SIGKILL the torchrun agent: its workers die with it (PR_SET_PDEATHSIG) instead of training on unsupervised.

No test races the clock: the bounds are checked as "exits at all, within a generous limit", the message says which
rank and why."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from megatron_code.testing import free_port

from ._cmd import ROOT, TINY, env

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1200)]

TIMEOUT_MIN = 0.5  # --distributed-timeout-minutes: the heartbeat names a silent rank after 15 s


def _workers(agent_pid: int) -> dict[int, int]:
    """{global rank: pid} of the agent's worker processes."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != agent_pid:
                continue
            with open(f"/proc/{name}/environ", "rb") as f:
                environ = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
            out[int(environ[b"RANK"])] = int(name)
        except (OSError, KeyError, ValueError, IndexError):
            continue
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _launch(nproc: int, tmp_path, extra: list[str]):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), os.path.join(ROOT, "pretrain_code.py"),
           *TINY, "--train-iters", "100000", "--save", str(tmp_path / "ckpt"), "--save-interval", "1000000",
           "--distributed-timeout-minutes", str(TIMEOUT_MIN), *extra]
    err = open(tmp_path / "stderr.txt", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=err, text=True)
    for line in proc.stdout:  # wait until every rank trains (iteration 2 needs all of them)
        if re.search(r"\biteration +2/", line):
            break
    else:
        proc.wait()
        pytest.fail("training never started: " + (tmp_path / "stderr.txt").read_text()[-3000:])
    return proc


def test_a_stopped_rank_is_named_and_every_rank_exits(tmp_path):
    proc = _launch(4, tmp_path, ["--micro-batch-size", "1", "--global-batch-size", "8"])
    workers = _workers(proc.pid)
    assert sorted(workers) == [0, 1, 2, 3], workers
    os.kill(workers[2], signal.SIGSTOP)
    try:
        proc.stdout.read()
        rc = proc.wait(timeout=900)
    finally:
        for pid in workers.values():
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    stderr = (tmp_path / "stderr.txt").read_text()
    assert rc != 0
    named = [line for line in stderr.splitlines() if line.startswith("error: rank 2 (")]
    assert named and "has not sent a heartbeat" in named[0] and f"pid {workers[2]}" in named[0], stderr[-4000:]
    assert {line.rsplit("; rank ", 1)[1].split()[0] for line in named} <= {"0", "1", "3"}
    assert not [pid for pid in workers.values() if _alive(pid)]  # torchrun reaped the stopped one


def test_workers_die_with_their_launcher(tmp_path):
    proc = _launch(2, tmp_path, [])
    workers = _workers(proc.pid)
    assert sorted(workers) == [0, 1], workers
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 300  # the kernel signals at once; this only bounds a broken run
    while any(_alive(pid) for pid in workers.values()) and time.monotonic() < deadline:
        time.sleep(0.5)
    alive = [pid for pid in workers.values() if _alive(pid)]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, "workers kept training after their launcher died"
