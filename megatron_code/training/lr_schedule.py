"""Learning-rate schedules (Megatron semantics): linear warmup from 0 to lr, then constant / linear / cosine /
inverse-square-root decay to min_lr at lr_decay_iters, min_lr afterwards. A pure function of the iteration, so a
resumed run needs no scheduler state."""

from __future__ import annotations

import math

from ..config.optim import OptimConfig


def warmup_iters(cfg: OptimConfig, train_iters: int) -> int:
    if cfg.lr_warmup_iters:
        return cfg.lr_warmup_iters
    if cfg.lr_warmup_fraction:
        return int(cfg.lr_warmup_fraction * (cfg.lr_decay_iters or train_iters))
    return 0


def lr_at(iteration: int, cfg: OptimConfig, train_iters: int) -> float:
    """Learning rate for optimizer step `iteration` (0-based: the first step uses lr_at(0))."""
    warm = warmup_iters(cfg, train_iters)
    decay_iters = cfg.lr_decay_iters or train_iters
    step = iteration + 1  # Megatron counts the first update as step 1 of the warmup
    if warm and step <= warm:
        return cfg.lr * step / warm
    style = cfg.lr_decay_style
    if style == "constant":
        return cfg.lr
    if style == "inverse-square-root":
        return max(cfg.min_lr, cfg.lr * math.sqrt(max(warm, 1)) / math.sqrt(max(step, 1)))
    if step >= decay_iters:
        return cfg.min_lr
    progress = (step - warm) / max(1, decay_iters - warm)
    if style == "linear":
        coeff = 1.0 - progress
    else:  # cosine
        coeff = 0.5 * (math.cos(math.pi * progress) + 1.0)
    return cfg.min_lr + coeff * (cfg.lr - cfg.min_lr)
