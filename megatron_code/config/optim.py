"""Optimizer and learning-rate schedule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .base import ConfigBase, ConfigError, check_ranges

DECAY_STYLES = ("constant", "linear", "cosine", "inverse-square-root", "WSD", "exponential")
WSD_DECAY_STYLES = ("exponential", "linear", "cosine", "minus_sqrt")  # Megatron-LM's --lr-wsd-decay-style
OPTIMIZERS = ("adamw", "adafactor")


@dataclass
class OptimConfig(ConfigBase):
    # adamw, or adafactor: Shazeer & Stern (2018) as PaLM ran it (training/optimizer.py: Adafactor).
    optimizer: str = "adamw"
    lr: float = 3e-4
    min_lr: float = 0.0
    # Megatron's --decoupled-lr / --decoupled-min-lr: the word embeddings and the output layer follow the same
    # schedule from these peak / floor values instead (None: --lr / --min-lr).
    decoupled_lr: Optional[float] = None
    decoupled_min_lr: Optional[float] = None
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    lr_decay_style: str = "cosine"
    lr_warmup_iters: int = 0
    # Warmup starts here (Megatron's --lr-warmup-init). Equal to lr: a flat warmup (PaLM's constant 1e-2 phase).
    lr_warmup_init: float = 0.0
    # WSD only: the annealing length at the end of the decay (Megatron's --lr-wsd-decay-iters / -samples) and its
    # shape (--lr-wsd-decay-style; Megatron's default exponential). The samples form resolves to iterations.
    lr_wsd_decay_style: str = "exponential"
    lr_wsd_decay_iters: Optional[int] = None
    lr_wsd_decay_samples: Optional[int] = None
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
    # The democratization study's rules (training/formulas.py), set by `--lr auto`, `--lr-warmup-iters auto`,
    # `--weight-decay auto`: the value is computed at launch from the model and the batch plan, and printed.
    lr_auto: bool = False
    lr_warmup_auto: bool = False
    weight_decay_auto: bool = False
    weight_decay_k: float = 5000.0  # its K in lambda = K sqrt(b / (N_tokens N_batches))
    # Weight decay tied to the learning rate: decay = lr ** this power at each step (PaLM, Chowdhery et al. 2022,
    # sec. 5: "a dynamic weight decay of lr^2.0"), replacing weight_decay for the decayed parameters. None: off.
    weight_decay_lr_power: Optional[float] = None
    # Adafactor (Shazeer & Stern, 2018) as PaLM used it (sec. 5): second-moment decay beta2_k = 1 - k^decay
    # (decay -0.8), update clipping at RMS 1.0 (their d), the step scaled by max(eps2, RMS(param)) ("parameter
    # scaling"), first moment adam_beta1 (PaLM: 0.9; 0 disables it), and no factorization by default.
    adafactor_beta2_decay: float = -0.8
    adafactor_clip_threshold: float = 1.0
    adafactor_eps1: float = 1e-30
    adafactor_eps2: float = 1e-3
    adafactor_factored: bool = False

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optim.optimizer '{self.optimizer}' is not supported (available: "
                              f"{', '.join(OPTIMIZERS)})")
        if self.optimizer == "adafactor":
            if self.adafactor_factored:
                raise ConfigError("optim.adafactor_factored: the factored second moment is not implemented (PaLM "
                                  "ran Adafactor without factorization); set it to false")
            if not self.adafactor_beta2_decay < 0:
                raise ConfigError(f"optim.adafactor_beta2_decay must be negative (beta2_k = 1 - k^decay; PaLM: "
                                  f"-0.8), got {self.adafactor_beta2_decay}")
            if self.adafactor_clip_threshold <= 0 or self.adafactor_eps1 <= 0 or self.adafactor_eps2 < 0:
                raise ConfigError("optim.adafactor_clip_threshold and adafactor_eps1 must be positive, "
                                  "adafactor_eps2 >= 0")
        if self.weight_decay_lr_power is not None and self.weight_decay_lr_power <= 0:
            raise ConfigError(f"optim.weight_decay_lr_power must be positive (PaLM: 2.0), got "
                              f"{self.weight_decay_lr_power}")
        if self.lr > 0 and not 0 <= self.lr_warmup_init <= self.lr:
            raise ConfigError(f"--lr-warmup-init ({self.lr_warmup_init}) must be in [0, --lr ({self.lr})]")
        if self.lr_decay_style == "WSD":
            if self.lr_wsd_decay_style not in WSD_DECAY_STYLES:
                raise ConfigError(f"--lr-wsd-decay-style must be one of {WSD_DECAY_STYLES}, got "
                                  f"'{self.lr_wsd_decay_style}'")
            if self.lr_wsd_decay_iters is None and self.lr_wsd_decay_samples is None:
                raise ConfigError("--lr-decay-style WSD needs the annealing length: give --lr-wsd-decay-iters "
                                  "or --lr-wsd-decay-samples (as in Megatron)")
            for name in ("lr_wsd_decay_iters", "lr_wsd_decay_samples"):
                value = getattr(self, name)
                if value is not None and value <= 0:
                    raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.lr_decay_style == "exponential" and self.min_lr <= 0:
            raise ConfigError("--lr-decay-style exponential decays geometrically from --lr to --min-lr: give a "
                              "positive --min-lr (e.g. 0.1 x --lr)")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if self.decoupled_lr is not None and not 0 <= (self.decoupled_min_lr or 0.0) <= self.decoupled_lr:
            raise ConfigError(f"--decoupled-min-lr ({self.decoupled_min_lr}) must be in [0, --decoupled-lr "
                              f"({self.decoupled_lr})]")
        if self.decoupled_min_lr is not None and self.decoupled_lr is None:
            raise ConfigError("--decoupled-min-lr needs --decoupled-lr")
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
