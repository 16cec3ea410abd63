"""Multi-phase training (training/phases.py): one command runs three phases (each its own data, length, batch or
batch schedule, LR schedule, optimizer keep/reset); a run SIGKILLed in phase 2 and re-run with the same command
matches the uninterrupted run bitwise, skips what is done, and every checkpoint records its phase."""

import glob
import os
import sys

import pytest
import torch

from ._cmd import ROOT, TINY, kill_at_iteration, run, train_losses

pytestmark = pytest.mark.e2e

BASE = [a for i, a in enumerate(TINY) if a != "--global-batch-size" and TINY[i - 1] != "--global-batch-size"]
PHASES = """
phases:
  - name: pile
    training: {train_iters: 4, global_batch_size: 8}
    optim: {lr: 2.0e-3, lr_warmup_iters: 1, lr_decay_style: cosine}
  - name: code
    optimizer_state: keep
    training: {train_iters: 8, global_batch_size: 4, seed: 7}
    optim: {lr: 1.0e-3, lr_warmup_iters: 0, lr_decay_style: linear}
  - name: python
    optimizer_state: reset
    training: {train_iters: 3, batch_size_schedule: "4:0,8:2", seed: 9}
    optim: {lr: 5.0e-4, lr_warmup_iters: 0, lr_decay_style: constant}
"""
NAMES = ["phase-0-pile", "phase-1-code", "phase-2-python"]


def all_losses(save: str) -> dict:
    return {name: train_losses(os.path.join(save, name)) for name in NAMES}


def test_three_phases_killed_in_phase_two_resume_bitwise(tmp_path):
    cfg = tmp_path / "phases.yaml"
    cfg.write_text(PHASES)
    args = BASE + ["--config", str(cfg), "--save-interval", "2"]
    ref = str(tmp_path / "ref")
    tb = str(tmp_path / "tb")
    run(args + ["--save", ref, "--tensorboard-dir", tb])
    reference = all_losses(ref)
    assert [sorted(reference[n]) for n in NAMES] == [[1, 2, 3, 4], list(range(1, 9)), [1, 2, 3]]
    # each phase's learning rate and batch size in TensorBoard (Megatron's tags), under TB/phase-i-NAME
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    seen = {}
    for name in NAMES:
        acc = EventAccumulator(glob.glob(os.path.join(tb, name, "**", "events.out.tfevents.*"), recursive=True)[0],
                               size_guidance={"scalars": 0})
        acc.Reload()
        seen[name] = {tag: [e.value for e in acc.Scalars(tag)] for tag in ("learning-rate", "batch-size")}
    assert seen["phase-0-pile"]["batch-size"] == [8] * 4 and seen["phase-1-code"]["batch-size"] == [4] * 8
    assert seen["phase-2-python"]["batch-size"] == [4, 4, 8]
    assert seen["phase-2-python"]["learning-rate"] == pytest.approx([5e-4] * 3)
    # linear from 1e-3 to the tiny preset's min_lr 2e-4 over 8 steps: step 1
    assert seen["phase-1-code"]["learning-rate"][0] == pytest.approx(2e-4 + (1 - 1 / 8) * 8e-4)

    save = str(tmp_path / "run")
    cmd = [sys.executable, os.path.join(ROOT, "pretrain_code.py")] + args + ["--save", save]
    # kill in phase 2 after its step 3: its checkpoint 2 exists, 3 is past it
    kill_at_iteration(cmd, os.path.join(save, NAMES[1], "metrics.jsonl"), 3)
    latest = open(os.path.join(save, NAMES[1], "latest")).read().strip()
    assert latest in ("iter_0000002", "iter_0000004"), latest
    assert not os.path.exists(os.path.join(save, NAMES[2]))
    out = run(args + ["--save", save])  # the same command resumes
    assert "phase 0 (pile) is complete" in out.stdout and "resumed from" in out.stdout
    assert all_losses(save) == reference
    for i, name in enumerate(NAMES):  # every checkpoint records its phase
        states = glob.glob(os.path.join(save, name, "iter_*", "mp_rank_00_model_states.pt"))
        assert states and all(torch.load(f, weights_only=False)["phase"] == {"index": i, "name": name.split("-")[2],
                                                                              "of": 3} for f in states)
    again = run(args + ["--save", save])  # nothing left to do
    assert again.stdout.count("is complete") == 3
