"""Optimizer and learning-rate schedule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .base import ConfigBase, ConfigError, check_ranges

DECAY_STYLES = ("constant", "linear", "cosine", "inverse-square-root")


@dataclass
class OptimConfig(ConfigBase):
    optimizer: str = "adamw"
    lr: float = 3e-4
    min_lr: float = 0.0
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    lr_decay_style: str = "cosine"
    lr_warmup_iters: int = 0
    # Megatron's --lr-warmup-fraction: warmup = fraction x decay iterations (used when lr_warmup_iters == 0).
    lr_warmup_fraction: Optional[float] = None
    # None -> train_iters.
    lr_decay_iters: Optional[int] = None
    # The same two lengths in samples (Megatron) or tokens (Megatron-DeepSpeed); None: not given. They are
    # converted to lr_warmup_iters / lr_decay_iters by JobConfig.resolve_units() once the global batch size is
    # known (rounding up), so the schedule itself stays a function of the iteration only.
    lr_warmup_samples: Optional[int] = None
    lr_decay_samples: Optional[int] = None
    lr_warmup_tokens: Optional[int] = None
    lr_decay_tokens: Optional[int] = None

    def validate(self) -> None:
        if self.optimizer not in ("adamw",):
            raise ConfigError(f"optim.optimizer '{self.optimizer}' is not supported (available: adamw)")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"--min-lr ({self.min_lr}) must be in [0, --lr ({self.lr})]")
        if self.lr_decay_style not in DECAY_STYLES:
            raise ConfigError(f"--lr-decay-style must be one of {DECAY_STYLES}, got '{self.lr_decay_style}'")
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1):
            raise ConfigError("--adam-beta1/--adam-beta2 must be in [0, 1)")
        if self.clip_grad < 0 or self.weight_decay < 0 or self.lr_warmup_iters < 0:
            raise ConfigError("--clip-grad, --weight-decay and --lr-warmup-iters must be >= 0")
        if self.adam_eps <= 0:
            raise ConfigError(f"--adam-eps must be positive (it keeps Adam's division finite), got {self.adam_eps}")
        check_ranges("optim", {"lr_warmup_fraction": (0, 1), "lr_decay_iters": (1, None)}, self)
        for name in ("lr_warmup_samples", "lr_warmup_tokens"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
        for name in ("lr_decay_samples", "lr_decay_tokens"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}")
