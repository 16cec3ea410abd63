"""Finite steps in every layout (issue 14, finding 1): a NaN injected into one step's forward (iteration 2) makes
every rank refuse that step before any weight changes - DP2 at ZeRO 0/1/2/3, bf16 at ZeRO 0 and 1, TP2 and PP2 -
and the next steps train again. Each rank compares its own weights (its ZeRO partition) before and after every
step: unchanged exactly at the refused step, changed at every other."""

import pytest

from megatron_code.testing import run_distributed

import _dp_train

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

LAYOUTS = {
    "zero0": ["--zero-stage", "0"],
    "zero1": ["--zero-stage", "1"],
    "zero2": ["--zero-stage", "2"],
    "zero3": ["--zero-stage", "3"],
    "bf16_zero0": ["--bf16"],
    "bf16_zero1": ["--bf16", "--zero-stage", "1"],
    "tp2": ["--tensor-model-parallel-size", "2"],
    "pp2": ["--pipeline-model-parallel-size", "2"],
}
BAD = 2  # the iteration whose forward is poisoned


def _poison(module, _inputs, output):
    """Forward hook: NaN into every floating-point output while the trainer is on the poisoned step."""
    import torch
    trainer = module._finite_test_trainer
    if not (module.training and torch.is_grad_enabled() and trainer.iteration == BAD - 1):
        return output
    if torch.is_tensor(output):
        return output * float("nan") if output.is_floating_point() else output
    if isinstance(output, tuple):
        return tuple(o * float("nan") if torch.is_tensor(o) and o.is_floating_point() else o for o in output)
    return output


def run_layouts(rank, world):
    import os
    import sys

    import torch

    from megatron_code.config.cli import parse_args
    from megatron_code.training.trainer import Trainer

    out = {}
    devnull = open(os.devnull, "w")
    for key, extra in LAYOUTS.items():
        job = parse_args(_dp_train.BASE + ["--train-iters", "4"] + extra).job
        stdout, sys.stdout = sys.stdout, devnull
        try:
            trainer = Trainer(job)
            module = trainer.engine.module
            module._finite_test_trainer = trainer
            module.register_forward_hook(_poison)

            def checksum():
                with torch.no_grad():
                    return [getattr(p, "ds_tensor", p).detach().double().clone() for p in module.parameters()]

            changed, step = [], trainer.train_step

            def train_step(batches):
                before = checksum()
                loss = step(batches)
                changed.append(any(not torch.equal(a, b) for a, b in zip(before, checksum())))
                return loss

            trainer.train_step = train_step
            history = trainer.train()
            out[key] = {"changed": changed, "skipped": trainer.skipped_steps,
                        "trained": [it for it, _ in history["train_loss"]]}
        finally:
            sys.stdout = stdout
    return out


def test_a_poisoned_step_is_refused_on_every_rank_in_every_layout():
    results = run_distributed(run_layouts, 2, timeout=1200)
    for rank, per_layout in enumerate(results):
        for key, r in per_layout.items():
            assert r["changed"] == [True, False, True, True], (rank, key, r)
            assert r["skipped"] == 1 and r["trained"] == [1, 3, 4], (rank, key, r)
