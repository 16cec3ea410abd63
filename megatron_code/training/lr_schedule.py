"""Learning-rate schedules (Megatron-LM's `OptimizerParamScheduler.get_lr`, megatron/core/optimizer_param_scheduler.py):
linear warmup from `lr_warmup_init` to lr, then constant / linear / cosine / inverse-square-root / WSD decay to
min_lr at lr_decay_iters, min_lr afterwards; plus `exponential` (the democratization study's chapter 3 ablation).

A pure function of training progress, so a resumed run needs no scheduler state. Progress is counted in
iterations of the final global batch: Megatron's scheduler advances by the current global batch size in samples
each step, so with a batch-size schedule (ramp-up) the LR moves more slowly while the batch is small; we get the
same by passing `progress = consumed samples after this step / final global batch` (for a constant batch that is
iteration + 1).

Styles (step = progress, W = warmup, D = decay iterations, r = (step - W) / (D - W)):
- constant: lr.
- linear: min_lr + (1 - r) (lr - min_lr). cosine: min_lr + (cos(pi r) + 1) / 2 (lr - min_lr).
- inverse-square-root: max(min_lr, lr sqrt(max(W, 1)) / sqrt(step)) up to D, min_lr after (as Megatron). With
  lr_warmup_init = lr the warmup is flat, which is PaLM's schedule (Chowdhery et al., 2022, sec. 5: 1e-2 for 10k
  steps, then decayed as 1/sqrt(k)).
- WSD (warmup-stable-decay, Megatron's `--lr-decay-style WSD`): lr until D - A, then an annealing of A =
  lr_wsd_decay_iters steps with ratio a = (step - (D - A)) / A and `lr_wsd_decay_style`: linear 1 - a,
  cosine (cos(pi a) + 1) / 2, exponential 2 * 0.5^a - 1, minus_sqrt 1 - sqrt(a).
- exponential: lr (min_lr / lr)^r, a geometric decay from lr to min_lr > 0.
"""

from __future__ import annotations

import math
from typing import Optional

from ..config.optim import OptimConfig


def warmup_iters(cfg: OptimConfig, train_iters: int) -> int:
    if cfg.lr_warmup_iters:
        return cfg.lr_warmup_iters
    if cfg.lr_warmup_fraction:
        return int(cfg.lr_warmup_fraction * (cfg.lr_decay_iters or train_iters))
    return 0


def _wsd_coeff(style: str, ratio: float) -> float:
    if style == "linear":
        return 1.0 - ratio
    if style == "cosine":
        return 0.5 * (math.cos(math.pi * ratio) + 1.0)
    if style == "exponential":
        return 2.0 * math.pow(0.5, ratio) - 1.0
    return 1.0 - math.sqrt(ratio)  # minus_sqrt (OptimConfig.validate admits nothing else)


def lr_at(iteration: int, cfg: OptimConfig, train_iters: int, progress: Optional[float] = None) -> float:
    """Learning rate for optimizer step `iteration` (0-based: the first step uses lr_at(0)). `progress`: the
    schedule position in final-batch iterations after this step (default iteration + 1; see the module doc)."""
    warm = warmup_iters(cfg, train_iters)
    decay_iters = cfg.lr_decay_iters or train_iters
    step = float(iteration + 1) if progress is None else float(progress)  # the first update is step 1 of warmup
    if warm and step <= warm:
        return cfg.lr_warmup_init + (cfg.lr - cfg.lr_warmup_init) * step / warm
    style = cfg.lr_decay_style
    if style == "constant":
        return cfg.lr
    if style == "inverse-square-root":
        if step > decay_iters:  # Megatron: min_lr after the decay length, for this style too
            return cfg.min_lr
        return max(cfg.min_lr, cfg.lr * math.sqrt(max(warm, 1)) / math.sqrt(max(step, 1.0)))
    if step >= decay_iters:
        return cfg.min_lr
    if style == "WSD":
        anneal = cfg.lr_wsd_decay_iters
        start = decay_iters - anneal
        coeff = 1.0 if step <= start else _wsd_coeff(cfg.lr_wsd_decay_style, (step - start) / anneal)
        return cfg.min_lr + coeff * (cfg.lr - cfg.min_lr)
    progress_ratio = (step - warm) / max(1, decay_iters - warm)
    if style == "exponential":
        return cfg.lr * math.pow(cfg.min_lr / cfg.lr, progress_ratio)
    if style == "linear":
        coeff = 1.0 - progress_ratio
    else:  # cosine
        coeff = 0.5 * (math.cos(math.pi * progress_ratio) + 1.0)
    return cfg.min_lr + coeff * (cfg.lr - cfg.min_lr)
