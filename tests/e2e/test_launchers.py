"""The launchers a user types, on CPU: `deepspeed --num_gpus 1`, `torchrun --nproc_per_node 2` and a two-node
`deepspeed --hostfile` run (both "nodes" on this machine, started with --no_ssh --node_rank as on a cluster without
passwordless ssh). Data parallelism over 2 processes must train the same model as the single process: with
dropout 0 and the same global batch (world 1: micro 2 x accumulation 2; DP 2: micro 2 per rank), the losses agree
to 1e-5 relative."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

from megatron_code.testing import free_port

from ._cmd import ROOT, env, run, train_losses

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

ITERS = 3
ARGS = ["--preset", "tiny", "--model.vocab_size", "256", "--mock-data", "--seq-length", "32",
        "--micro-batch-size", "2", "--global-batch-size", "4", "--train-iters", str(ITERS),
        "--hidden-dropout", "0", "--attention-dropout", "0", "--log-interval", "1", "--eval-interval", "0",
        "--training.progress_bar", "false"]


def _script(name: str) -> str | None:
    """A console script installed beside this interpreter (or on PATH)."""
    return shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)


def _deepspeed() -> list[str]:
    path = _script("deepspeed")
    if path is None:
        pytest.fail("the `deepspeed` launcher script is not installed (pip install deepspeed)")
    return [sys.executable, path]


def _layout(stdout: str) -> set[tuple[str, ...]]:
    return set(re.findall(r"world (\d+) = TP (\d+) x PP (\d+) x DP (\d+)", stdout))


def _assert_same_losses(got: dict[int, float], want: dict[int, float]) -> None:
    assert sorted(got) == sorted(want) == list(range(1, ITERS + 1))
    for it in want:
        assert got[it] == pytest.approx(want[it], rel=1e-5), (it, got, want)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """`deepspeed --num_gpus 1 pretrain_code.py ...`: the DeepSpeed launcher on the CPU accelerator, world 1."""
    save = str(tmp_path_factory.mktemp("ds1"))
    launcher = _deepspeed() + ["--num_gpus", "1", "--master_port", str(free_port())]
    proc = run(ARGS + ["--save", save], launcher=launcher, timeout=600)
    return proc, save


def test_deepspeed_num_gpus_1_trains_on_cpu(single):
    proc, save = single
    assert _layout(proc.stdout) == {("1", "1", "1", "1")}, proc.stdout[-3000:]
    assert "--local_rank=0" in proc.stdout + proc.stderr  # it really went through deepspeed.launcher.launch
    assert open(os.path.join(save, "latest")).read().strip() == f"iter_{ITERS:07d}"
    losses = train_losses(save)
    assert sorted(losses) == list(range(1, ITERS + 1))


def test_torchrun_two_processes_is_dp2_and_matches_one_process(single, tmp_path):
    save = str(tmp_path / "tr2")
    tr = _script("torchrun")
    launcher = ([sys.executable, tr] if tr else [sys.executable, "-m", "torch.distributed.run"]) + [
        "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    proc = run(ARGS + ["--save", save], launcher=launcher, timeout=600)
    assert _layout(proc.stdout) == {("2", "1", "1", "2")}, proc.stdout[-3000:]
    _assert_same_losses(train_losses(save), train_losses(single[1]))


def test_deepspeed_hostfile_two_nodes_without_ssh_matches_one_process(single, tmp_path):
    # examples/hostfile.example format; the host names only matter to ssh/pdsh, which --no_ssh skips.
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    save, port = str(tmp_path / "ds-2nodes"), free_port()
    procs = []
    try:
        for node_rank in (1, 0):
            cmd = _deepspeed() + ["--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(node_rank),
                                  "--master_addr", "127.0.0.1", "--master_port", str(port),
                                  os.path.join(ROOT, "pretrain_code.py")] + ARGS + ["--save", save]
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True, start_new_session=True))
        outs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:  # one node failing leaves the other waiting in a collective: end both process groups
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-5000:]
    assert "nnodes=2" in outs[1] and _layout(outs[1]) == {("2", "1", "1", "2")}, outs[1][-3000:]
    _assert_same_losses(train_losses(save), train_losses(single[1]))
