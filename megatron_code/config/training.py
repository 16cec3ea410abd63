"""Batching, precision, checkpointing and logging."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .base import ConfigBase, ConfigError


@dataclass
class TrainingConfig(ConfigBase):
    micro_batch_size: int = 4
    # None -> micro_batch_size x data-parallel size (no accumulation).
    global_batch_size: Optional[int] = None
    train_iters: int = 100
    seed: int = 1234
    precision: str = "fp32"  # fp32 | bf16 | fp16 (dynamic loss scaling)
    initial_loss_scale_power: int = 16
    save: Optional[str] = None
    load: Optional[str] = None
    save_interval: int = 0
    # Stop after this many iterations of this run (a save happens first); for planned preemption and tests.
    exit_interval: int = 0
    eval_interval: int = 0
    eval_iters: int = 10
    log_interval: int = 10
    tensorboard_dir: Optional[str] = None
    # Peak FLOP/s per device for MFU; None -> known GPU table on CUDA, a short matmul probe on CPU.
    peak_tflops: Optional[float] = None
    # Keep this many newest checkpoints (0 = keep all).
    keep_checkpoints: int = 0
    progress_bar: bool = True
    # Number of torch CPU threads (0 = torch default).
    cpu_threads: int = 0

    def validate(self) -> None:
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"precision must be fp32, bf16 or fp16, got '{self.precision}'")
        for name in ("micro_batch_size", "train_iters", "log_interval"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive")
        if self.global_batch_size is not None and self.global_batch_size <= 0:
            raise ConfigError("--global-batch-size must be positive")
