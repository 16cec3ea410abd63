"""Run control: a SIGTERM (SLURM preemption) saves and exits cleanly; weights-only checkpoints and fine-tuning."""

import os
import signal
import subprocess
import sys
import time

import pytest

from ._cmd import ROOT, TINY, env, run, train_losses

pytestmark = pytest.mark.e2e


def test_sigterm_saves_at_the_next_iteration_and_exits_cleanly(tmp_path):
    save = str(tmp_path / "run")
    cmd = [sys.executable, os.path.join(ROOT, "pretrain_code.py")] + TINY + ["--train-iters", "400", "--save", save]
    log_path = tmp_path / "out.log"
    log_file = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=log_file, stderr=subprocess.STDOUT, text=True)
    metrics = os.path.join(save, "metrics.jsonl")
    deadline = time.time() + 900  # generous: a loaded shared machine can be 20x slower than an idle one
    try:
        while not (os.path.exists(metrics) and '"iteration": 3,' in open(metrics).read()):
            assert proc.poll() is None, "training ended early"
            assert time.time() < deadline, "training did not reach iteration 3"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        log_file.close()
    out = log_path.read_text()
    assert proc.returncode == 0, out[-2000:]
    assert "stopping at iteration" in out and "signal 15" in out
    stopped = max(train_losses(save))
    assert 3 <= stopped < 400
    assert open(os.path.join(save, "latest")).read().strip() == f"iter_{stopped:07d}"


def test_weights_only_checkpoint_and_finetune(tmp_path):
    save = str(tmp_path / "run")
    run(TINY + ["--train-iters", "2", "--save", save, "--no-save-optim"])
    out = run(TINY + ["--train-iters", "4", "--load", save], check=False)
    assert out.returncode == 2 and "--no-load-optim" in out.stderr and "Traceback" not in out.stderr
    ft = str(tmp_path / "ft")
    out = run(TINY + ["--train-iters", "2", "--load", save, "--finetune", "--save", ft])
    assert "fine-tuning from" in out.stdout
    assert sorted(train_losses(ft)) == [1, 2]  # iteration counting restarted
    out = run(TINY + ["--train-iters", "3", "--load", save, "--no-load-optim", "--save", str(tmp_path / "c")])
    assert "resumed from" in out.stdout and sorted(train_losses(str(tmp_path / "c"))) == [3]
