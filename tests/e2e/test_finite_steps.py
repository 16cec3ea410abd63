"""Finite steps only (issue 14, finding 1): a step whose loss or gradient is not finite is never taken, so no
checkpoint ever holds NaN/inf; after training.max_consecutive_skips refused steps in a row the run stops with one
line (exit status 1), or with --rollback-on-nonfinite reloads the newest checkpoint, skips the refused batches (by
sample index) and finishes (exit status 0). `--lr 30` diverges to an infinite gradient norm at iteration 15 on this
model (one process and DP2 ZeRO-1); before the guard that step wrote NaN into every weight and was saved."""

from __future__ import annotations

import glob
import json
import os
import re
import sys

import pytest
import torch

from megatron_code.testing import free_port

from ._cmd import ROOT, TINY, env, run

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

NO_DROPOUT = ["--hidden-dropout", "0", "--attention-dropout", "0"]
LR30 = ["--lr", "30", "--lr-warmup-iters", "0", "--train-iters", "40", "--save-interval", "1"]


def _tensors(obj):
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def assert_checkpoints_finite(save: str) -> int:
    """Every tensor of every file of every checkpoint (weights, ZeRO partitions, optimizer state) is finite."""
    files = glob.glob(os.path.join(save, "iter_*", "*.pt"))
    assert files, f"no checkpoint in {save}"
    for path in files:
        state = torch.load(path, map_location="cpu", weights_only=False)
        for t in _tensors(state):
            if t.is_floating_point():
                assert bool(torch.isfinite(t).all()), f"non-finite values in {path}"
    return len(files)


def _one_error_line(stderr: str, start: str) -> None:
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(start), stderr[-3000:]
    assert "megatron_code/" not in stderr, "a traceback through our code: " + stderr[-3000:]


def test_lr30_one_process_stops_in_one_line_and_saves_nothing_non_finite(tmp_path):
    save = str(tmp_path / "ckpt")
    proc = run(TINY + NO_DROPOUT + LR30 + ["--save", save], check=False)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    _one_error_line(proc.stderr, "error: 3 optimizer steps in a row were refused")
    assert "step skipped, weights unchanged (grad norm" in proc.stdout
    assert_checkpoints_finite(save)
    latest = open(os.path.join(save, "latest")).read().strip()
    # the last periodic save is the last good step's (none while steps were being refused)
    skipped = [json.loads(x) for x in open(os.path.join(save, "metrics.jsonl")) if '"skip"' in x]
    assert skipped and int(latest.split("_")[1]) < skipped[0]["iteration"]


@pytest.mark.slow
def test_lr30_dp2_zero1_stops_in_one_line_and_saves_nothing_non_finite(tmp_path):
    save = str(tmp_path / "ckpt")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                "127.0.0.1", "--master_port", str(free_port())]
    proc = run(TINY + NO_DROPOUT + LR30 + ["--save", save, "--zero-stage", "1"], check=False, launcher=launcher)
    assert proc.returncode != 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: 3 optimizer steps in a row were refused"), \
        proc.stderr[-3000:]
    assert_checkpoints_finite(save)


def _inject(mode: str, firsts: str, args: list[str]):
    import subprocess
    cmd = [sys.executable, os.path.join(ROOT, "tests", "e2e", "_inject.py"), mode, firsts, "--", *args]
    e = env()
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    return subprocess.run(cmd, cwd=ROOT, env=e, capture_output=True, text=True, timeout=900)


BASE = TINY + NO_DROPOUT + ["--train-iters", "8", "--save-interval", "2"]  # global batch 8


def test_a_transient_nan_batch_is_skipped_and_training_goes_on(tmp_path):
    save = str(tmp_path / "ckpt")
    proc = _inject("nan", "24", BASE + ["--save", save])  # iteration 4 = samples 24-31
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "iter 4: step skipped, weights unchanged (loss not finite" in proc.stdout
    assert "1 of 3 in a row, 1 skipped in all" in proc.stdout
    # Megatron's log line counts it as skipped and as a nan iteration (in the next logged line, iteration 5)
    assert re.search(r"iteration +5/ +8 .*number of skipped iterations: +1 \| number of nan iterations: +1 \|",
                     proc.stdout), proc.stdout[-3000:]
    assert open(os.path.join(save, "latest")).read().strip() == "iter_0000008"
    assert_checkpoints_finite(save)


def test_rollback_reloads_the_last_checkpoint_and_skips_the_offending_batches(tmp_path):
    save = str(tmp_path / "ckpt")
    # samples 40-47 and 48-55 (iterations 6 and 7) are bad; 2 refused steps in a row trigger the rollback
    proc = _inject("nan", "40,48", BASE + ["--save", save, "--rollback-on-nonfinite",
                                           "--training.max_consecutive_skips", "2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    # no periodic save at the refused iteration 6: the newest checkpoint is iteration 4's
    assert "rolled back from iteration 7 to the checkpoint of iteration 4" in out, out[-3000:]
    assert "samples 40-47, 48-55" in out
    assert "skipping samples 40-47" in out and "skipping samples 48-55" in out
    assert open(os.path.join(save, "latest")).read().strip() == "iter_0000008"
    assert_checkpoints_finite(save)
    meta = json.load(open(os.path.join(save, "iter_0000008", "meta.json")))
    assert meta["consumed_samples"] == 80  # 8 trained batches + the 2 rejected ones passed over


def test_rollback_gives_up_after_max_rollbacks(tmp_path):
    save = str(tmp_path / "ckpt")
    proc = _inject("nan", ",".join(str(8 * i) for i in range(3, 40)),
                   BASE + ["--save", save, "--rollback-on-nonfinite", "--training.max_rollbacks", "1"])
    assert proc.returncode == 1, proc.stderr[-3000:]
    _one_error_line(proc.stderr, "error: 3 optimizer steps in a row were refused after 1 rollbacks")
    assert_checkpoints_finite(save)


def test_a_loss_spike_is_refused_with_check_for_spiky_loss(tmp_path):
    save = str(tmp_path / "ckpt")
    proc = _inject("spike:1000", "48", BASE + ["--save", save, "--check-for-spiky-loss"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "iter 7: step skipped, weights unchanged (loss spike:" in proc.stdout, proc.stdout[-3000:]
    assert re.search(r"iteration +8/ +8 .*number of skipped iterations: +1 \| number of nan iterations: +0 \|",
                     proc.stdout), proc.stdout[-3000:]  # a spike is skipped but is not a nan iteration
    proc = _inject("spike:1000", "48", BASE + ["--save", str(tmp_path / "off")])
    assert proc.returncode == 0 and "step skipped" not in proc.stdout  # off unless asked for
