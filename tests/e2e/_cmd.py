"""Run the project's commands as a user would (subprocess), with a quiet, deterministic environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A 2-layer model on deterministic random tokens with dropout on (so RNG restore is exercised).
TINY = ["--preset", "tiny", "--model.vocab_size", "256", "--model.num_layers", "2", "--model.hidden_size", "64",
        "--model.ffn_hidden_size", "128", "--seq-length", "32", "--mock-data", "--micro-batch-size", "4",
        "--global-batch-size", "8", "--hidden-dropout", "0.1", "--attention-dropout", "0.1", "--log-interval", "1",
        "--lr-warmup-iters", "2", "--training.progress_bar", "false", "--eval-interval", "0"]


def env() -> dict:
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(k, None)
    return e


def run(args: list[str], timeout: int = 900, check: bool = True, launcher: list[str] | None = None):
    cmd = (launcher or [sys.executable]) + [os.path.join(ROOT, "pretrain_code.py")] + args
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n"
                             f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-5000:]}")
    return proc


def train_losses(save_dir: str) -> dict[int, float]:
    """iteration -> training loss from SAVE/metrics.jsonl (the last record of an iteration wins)."""
    out: dict[int, float] = {}
    with open(os.path.join(save_dir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if r["kind"] == "train":
                out[r["iteration"]] = r["loss"]
    return out


def kill_at_iteration(cmd: list[str], metrics: str, iteration: int, timeout: float = 900) -> None:
    """Start `cmd` and SIGKILL it as soon as `metrics` (a metrics.jsonl) records `iteration`. The timeout is a
    generous deadline for a loaded machine, not a race; the run exiting on its own first is a failure."""
    import signal
    import time

    import pytest

    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if os.path.exists(metrics) and f'"iteration": {iteration},' in open(metrics).read():
                return
            if proc.poll() is not None:
                pytest.fail(f"training exited early with {proc.returncode}")
            time.sleep(0.01)
        pytest.fail(f"training did not reach iteration {iteration} in time")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
