"""Multi-phase training: one command runs every phase of `JobConfig.phases` in order (the democratization study's
The Pile -> multi-language code -> Python curriculum, phi-1's pretrain -> fine-tune).

Layout: phase i of the run saved to SAVE writes its checkpoints (and metrics.jsonl; TensorBoard under
TB/phase-i-NAME) to SAVE/phase-i-NAME. A phase ends with a checkpoint at its last iteration; the next phase starts
from it: weights always; optimizer state too with `optimizer_state: keep` (the default), fresh with `reset`; its
iteration, data position and LR schedule start at 0 (each phase has its own data, length, batch and schedule).
Every checkpoint records its phase ({"index", "name", "of"} in the client state).

Re-running the same command resumes: phases whose directory holds their final checkpoint are skipped, a phase with
an earlier checkpoint resumes from it exactly like a single-phase run (bit-exact), and the first phase without
any checkpoint starts from the previous one's final checkpoint."""

from __future__ import annotations

import os
import sys
import time

from ..config.base import ConfigError
from ..config.job import JobConfig
from .ckpt_store import read_latest


def phase_dir(save: str, index: int, name: str) -> str:
    return os.path.join(save, f"phase-{index}-{name}")


def _latest_iteration(directory: str) -> int | None:
    tag = read_latest(directory) if os.path.isdir(directory) else None
    return int(tag.split("_")[1]) if tag else None


def run_phases(job: JobConfig) -> dict:
    from .trainer import Trainer, log

    t = job.training
    if not t.save:
        raise ConfigError("multi-phase training needs --save DIR: each phase starts from the previous phase's "
                          "final checkpoint (SAVE/phase-i-NAME)")
    phases = job.phase_jobs()
    history: dict = {}
    previous = None
    for index, (name, policy, pj) in enumerate(phases):
        directory = phase_dir(t.save, index, name)
        p = pj.training
        p.save = directory
        if t.tensorboard_dir:
            p.tensorboard_dir = os.path.join(t.tensorboard_dir, f"phase-{index}-{name}")
        done = _latest_iteration(directory)
        if done is not None:
            p.load = directory  # resume this phase (or skip it when complete)
            pj_iters = _planned_iters(pj)
            if done >= pj_iters:
                print(f"phase {index} ({name}) is complete in {directory}: skipped", file=sys.stdout, flush=True)
                previous = directory
                continue
        elif previous is not None:
            p.load = previous
            p.load_rng = False
            if policy == "reset":
                p.finetune = True
            else:
                p.reset_progress = True
        trainer = Trainer(pj)
        trainer.phase = {"index": index, "name": name, "of": len(phases)}
        log(f"phase {index + 1}/{len(phases)} '{name}': {p.train_iters} iterations, batch "
            f"{trainer.schedule.describe()}, lr {pj.optim.lr:g} ({pj.optim.lr_decay_style}), optimizer state "
            f"{policy if previous is not None and done is None else 'from this phase'} -> {directory}", trainer.rank)
        t0 = time.time()
        history[name] = trainer.train()
        log(f"phase {index + 1}/{len(phases)} '{name}' done in {time.time() - t0:.1f} s", trainer.rank)
        if trainer.iteration < p.train_iters:  # stopped early (exit interval, signal): later phases wait
            return history
        previous = directory
    return history


def _planned_iters(job: JobConfig) -> int:
    """The phase's length in iterations (lengths in samples/tokens resolved with its batch plan)."""
    if job.training.global_batch_size is None and not (job.training.rampup_batch_size or
                                                       job.training.step_batch_size_schedule or
                                                       job.training.batch_size_schedule):
        return job.training.train_iters
    job.resolve_units()
    return job.training.train_iters
