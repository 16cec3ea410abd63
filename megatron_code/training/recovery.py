"""What the trainer does with a step the StepGuard (guards.py) refused: count it, stop after
training.max_consecutive_skips in a row, or roll back to the newest checkpoint and pass over the refused batches;
and the last check before any save that the weights are finite. Functions of the Trainer, kept out of
trainer.py so the loop stays readable."""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.distributed as dist

from . import checkpoint as ckpt
from ..parallel.deepspeed_compat import local_tensor
from .guards import NonFiniteSteps, NonFiniteWeights, StepVerdict


def log(msg: str, rank: int) -> None:
    from .trainer import log as trainer_log
    trainer_log(msg, rank)


def check_weights_finite(trainer) -> None:
    """Collective. Refuse to save NaN/inf weights (the guard keeps them out; this is the last line before a
    checkpoint that a resume or an export would trust). ZeRO-3: each rank checks its own partition."""
    bad = torch.zeros((), dtype=torch.float64, device=trainer.engine.device)
    with torch.no_grad():
        for p in trainer.engine.module.parameters():
            local = local_tensor(p)
            if local.numel() and not bool(torch.isfinite(local.detach().float().sum())):
                bad += 1
    if trainer.world > 1:
        dist.all_reduce(bad)
    if bad.item():
        raise NonFiniteWeights(f"the weights hold NaN/inf at iteration {trainer.iteration}: nothing was saved; the "
                               f"last checkpoint in --save is intact (resume with --load and a lower --lr)")


def on_skipped(trainer, verdict: StepVerdict) -> bool:
    """Count a refused step; returns True when the caller must roll back (raises when the run must stop)."""
    t = trainer.job.training
    first = trainer.consumed - trainer.step_batch
    trainer.skipped_steps += 1
    if not verdict.why.startswith(("fp16 overflow", "loss spike")):
        trainer.nan_steps += 1  # Megatron's 'number of nan iterations': refused for a NaN/inf loss or gradient
    scaler_can_recover = (t.precision == "fp16" and verdict.why.startswith("fp16 overflow")
                          and trainer._loss_scale() > t.min_loss_scale)
    if not scaler_can_recover:  # the fp16 scaler's own skips count only once it can lower the scale no more
        trainer.bad_streak += 1
        trainer.bad_batches.append((first, trainer.consumed))
    trainer.sink.write(trainer.iteration, {"skipped": verdict.why, "loss": verdict.loss, "first_sample": first,
                                     "consumed_samples": trainer.consumed}, kind="skip")
    log(f"iter {trainer.iteration}: step skipped, weights unchanged ({verdict.why}; samples {first}-"
        f"{trainer.consumed - 1}) | {trainer.bad_streak} of {t.max_consecutive_skips} in a row, "
        f"{trainer.skipped_steps} skipped in all", trainer.rank)
    if trainer.bad_streak < t.max_consecutive_skips:
        return False
    if t.rollback_on_nonfinite and trainer.rollbacks < t.max_rollbacks:
        return True
    how = (f" after {trainer.rollbacks} rollbacks (training.max_rollbacks)" if t.rollback_on_nonfinite else "")
    raise NonFiniteSteps(f"{trainer.bad_streak} optimizer steps in a row were refused{how}, the last at iteration "
                         f"{trainer.iteration} ({verdict.why}): stopping without saving these steps; the weights "
                         f"and --save's checkpoints are those of the last good step. Lower --lr (or raise "
                         f"--lr-warmup-iters), check the data at the logged sample indices, or pass "
                         f"--rollback-on-nonfinite")


def rollback(trainer) -> None:
    """Reload the newest checkpoint (of --save, else --load) and mark the refused steps' batches to be skipped
    when the data reaches them again. Collective: every rank decided the same (the guard's verdicts agree)."""
    t = trainer.job.training
    src = next((d for d in (t.save, t.load) if d and ckpt.read_latest(d)), None)
    if src is None:
        raise NonFiniteSteps(f"{trainer.bad_streak} optimizer steps in a row were refused (last at iteration "
                             f"{trainer.iteration}) and there is no checkpoint to roll back to yet: lower --lr or "
                             f"save earlier (--save-interval)")
    job = copy.copy(trainer.job)  # the checkpoint's whole state, optimizer included, whatever --finetune says
    job.training = dataclasses.replace(t, finetune=False, load_optim=t.save_optim or t.load_optim)
    state = ckpt.load_checkpoint(trainer.engine, job, src, trainer.tok_fp)
    bad = sorted(trainer.bad_batches)
    trainer.skip_samples.update(first for first, _ in bad)
    trainer.rollbacks += 1
    trainer.bad_streak, trainer.bad_batches = 0, []
    failed_at = trainer.iteration
    trainer.iteration = int(state["iteration"])
    trainer.consumed = int(state["consumed_samples"])
    trainer.skip_samples.update(state.get("skip_samples") or ())
    if state.get("rng") is not None:
        ckpt.set_rng_state(state["rng"])
    log(f"rolled back from iteration {failed_at} to the checkpoint of iteration {trainer.iteration} in {src} "
        f"(rollback {trainer.rollbacks} of {t.max_rollbacks}); the batches of the refused steps will be skipped: "
        f"samples " + ", ".join(f"{a}-{b - 1}" for a, b in bad), trainer.rank)


def skip_rejected(trainer, batches) -> None:
    """Pass over global batches a rollback rejected (every rank reads and drops its micro batches of them)."""
    while trainer.consumed in trainer.skip_samples:
        trainer._set_step_batch(trainer.schedule.batch_at(trainer.iteration, trainer.consumed))  # its size then
        for _ in range(trainer.step_accum):
            next(batches)
        log(f"skipping samples {trainer.consumed}-{trainer.consumed + trainer.step_batch - 1} (rejected before a "
            f"rollback)", trainer.rank)
        trainer.consumed += trainer.step_batch


def extra_batches(trainer) -> int:
    """Batches a rollback may pass over (at most max_consecutive_skips per rollback) plus those a resumed run must
    still pass over: the training data holds that many more, so skipping never ends the run early."""
    t = trainer.job.training
    return (t.max_rollbacks * t.max_consecutive_skips if t.rollback_on_nonfinite else 0) + sum(
        1 for first in trainer.skip_samples if first >= trainer.consumed)
