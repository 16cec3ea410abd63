"""Batching, precision, checkpointing and logging."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from .base import ConfigBase, ConfigError, check_ranges, coerce


@dataclass
class TrainingConfig(ConfigBase):
    micro_batch_size: int = 4
    # None -> micro_batch_size x data-parallel size (no accumulation).
    global_batch_size: Optional[int] = None
    # Batch-size schedules (config/batch_schedule.py; at most one): Megatron's --rampup-batch-size START INCR
    # SAMPLES (up to global_batch_size), Megatron's --step-batch-size-schedule "TOKENS:BS ..." and ours,
    # --batch-size-schedule "BS:STEP,...". The schedule's last batch is the global batch size.
    rampup_batch_size: Optional[list[int]] = None
    step_batch_size_schedule: Optional[str] = None
    batch_size_schedule: Optional[str] = None
    # Run length in optimizer steps. Megatron's --train-samples / Megatron-DeepSpeed's --train-tokens below are
    # other units for the same thing: JobConfig.resolve_units() overwrites train_iters from them once the global
    # batch size is known (see its docstring for the rounding).
    train_iters: int = 100
    # Run length in samples (None: not given). Resolved to train_iters = ceil(train_samples / global batch).
    train_samples: Optional[int] = None
    # Run length in tokens (None: not given). Resolved through samples = ceil(tokens / seq_length); when both
    # train_samples and train_tokens are given, the run ends at whichever comes first (Megatron-DeepSpeed's
    # scripts give both, with train_samples deliberately larger).
    train_tokens: Optional[int] = None
    seed: int = 1234
    precision: str = "fp32"  # fp32 | bf16 | fp16 (loss scaling below)
    # Set by presets whose seed trained in fp16: where the accelerator has no fp16 (most CPUs), the run uses bf16
    # (same exponent range as fp32, so no loss scaling) with a one-line note instead of refusing.
    fp16_fallback_bf16: bool = False
    # fp16 loss scaling (DeepSpeed's fp16 section). loss_scale > 0: a static scale (Megatron's --loss-scale);
    # 0: dynamic scaling starting at 2**initial_loss_scale_power, halved after `hysteresis` consecutive overflows
    # (never below min_loss_scale) and doubled after loss_scale_window overflow-free steps.
    loss_scale: float = 0.0
    # 2**32: Megatron-LM's --initial-loss-scale default (megatron/training/arguments.py); the first overflowing
    # steps halve it to a working scale within a few iterations.
    initial_loss_scale_power: int = 32
    loss_scale_window: int = 1000
    hysteresis: int = 2
    min_loss_scale: float = 1.0
    save: Optional[str] = None
    load: Optional[str] = None
    save_interval: int = 0
    # Stop after this many iterations of this run (a save happens first); for planned preemption and tests.
    exit_interval: int = 0
    # Stop (after a save) once this many minutes of wall clock have passed since the start of this run; 0 = no
    # limit (Megatron's --exit-duration-in-mins, checked by the trainer at every iteration).
    exit_duration_mins: float = 0.0
    # Checkpoint contents. save_optim False: checkpoints hold no optimizer state (Megatron's --no-save-optim).
    # load_optim / load_rng False: --load restores weights but starts the optimizer / RNG fresh. finetune: --load
    # restores weights only and starts at iteration 0 with 0 consumed samples (implies no optimizer/RNG state).
    save_optim: bool = True
    load_optim: bool = True
    load_rng: bool = True
    finetune: bool = False
    # --load restores weights and optimizer state but starts at iteration 0 with 0 consumed samples and fresh RNG
    # (the next phase of a multi-phase run that keeps its optimizer state; training/phases.py).
    reset_progress: bool = False
    # --load of a save directory without a 'latest' file (a crash between a save and the pointer update): False
    # resumes from the newest complete iter_* with a warning, True refuses (docs/checkpoints.md).
    require_latest: bool = False
    eval_interval: int = 0
    eval_iters: int = 10
    log_interval: int = 10
    tensorboard_dir: Optional[str] = None
    # TensorBoard tag names: "megatron-lm" (flat: "lm loss", "lm loss vs samples", "learning-rate", ...) or
    # "megatron-deepspeed" (grouped: "lm-loss-training/lm loss", ... vs samples / vs tokens); a line with
    # --deepspeed picks the latter. Our own tags (train/loss, interval/mfu, ...) are written in both.
    tensorboard_style: str = "megatron-lm"
    # Weights & Biases (Megatron's --wandb-project/--wandb-exp-name/--wandb-save-dir/--wandb-entity): logging is
    # on when wandb_project is set; offline unless WANDB_MODE says otherwise (no network by default).
    # --load names a DeepSpeed universal checkpoint folder (ds_to_universal's output, or the directory holding its
    # latest_universal): Megatron-DeepSpeed's --universal-checkpoint, DeepSpeed's checkpoint.load_universal.
    universal_checkpoint: bool = False
    wandb_project: Optional[str] = None
    wandb_exp_name: Optional[str] = None
    wandb_save_dir: Optional[str] = None
    wandb_entity: Optional[str] = None
    # Peak FLOP/s per device for MFU; None -> known GPU table on CUDA, a short matmul probe on CPU.
    peak_tflops: Optional[float] = None
    # Keep this many newest checkpoints (0 = keep all).
    keep_checkpoints: int = 0
    progress_bar: bool = True
    # Number of torch CPU threads (0 = torch default).
    cpu_threads: int = 0
    # Score the causal-LM loss with the fused LM head + cross-entropy kernel (kernels/linear_cross_entropy: one
    # compute-dtype logits buffer, no float32 copies, nothing (B, S, V) kept for backward), with tensor parallelism
    # too (vocabulary-sharded head), ZeRO-3 and on the pipeline's last stage. Used where it applies: not TP with
    # fp16, not for MIM training; False = always unfused.
    fused_lm_loss: bool = True
    # PaLM's auxiliary loss (Chowdhery et al. 2022, sec. 5: 1e-4): adds z_loss * log^2 Z per scored token (Z the
    # softmax normaliser) to the training loss, on every loss path; logged as its own scalar `z_loss`. 0: off.
    z_loss: float = 0.0
    # Megatron-LM's --calculate-per-token-loss: the training loss is the sum of token losses over the whole global
    # batch (all micro batches and DP ranks) divided by its number of non-masked tokens, instead of the mean of
    # per-micro-batch means (training/losses.per_token_scale). Validation stays the mean of batch means.
    calculate_per_token_loss: bool = False
    # Finite steps only (training/guards.py StepGuard): a step whose loss or gradients are not finite (or, with
    # check_for_spiky_loss, whose loss exceeds spiky_loss_factor x the running mean) is not taken. After
    # max_consecutive_skips refused steps in a row the run stops with an error, or, with rollback_on_nonfinite,
    # reloads the newest checkpoint and skips the refused steps' batches (at most max_rollbacks times).
    max_consecutive_skips: int = 3
    rollback_on_nonfinite: bool = False
    max_rollbacks: int = 3
    check_for_spiky_loss: bool = False
    # Megatron-LM's SPIKY_LOSS_FACTOR is 10 (there: against the largest loss seen; here: the running mean).
    spiky_loss_factor: float = 10.0

    def validate(self) -> None:
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"precision must be fp32, bf16 or fp16, got '{self.precision}'")
        for name in ("micro_batch_size", "train_iters", "log_interval"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive")
        if self.global_batch_size is not None and self.global_batch_size <= 0:
            raise ConfigError("--global-batch-size must be positive")
        for name in ("train_samples", "train_tokens"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.loss_scale < 0:
            raise ConfigError(f"--loss-scale must be >= 0 (0 = dynamic loss scaling), got {self.loss_scale}")
        if self.loss_scale_window <= 0 or self.hysteresis <= 0:
            raise ConfigError("--loss-scale-window and --hysteresis must be positive")
        if self.min_loss_scale <= 0:
            raise ConfigError(f"--min-loss-scale must be positive, got {self.min_loss_scale}")
        if self.z_loss < 0:
            raise ConfigError(f"--z-loss must be >= 0 (PaLM: 1e-4), got {self.z_loss}")
        if self.exit_duration_mins < 0:
            raise ConfigError("--exit-duration-in-mins must be >= 0 (0 = no limit)")
        # numpy's legacy seeding (seed_everything) takes 0 <= seed < 2**32
        check_ranges("training", {"seed": (0, 2 ** 32 - 1), "save_interval": (0, None), "exit_interval": (0, None),
                                  "eval_interval": (0, None), "eval_iters": (0, None), "keep_checkpoints": (0, None),
                                  "cpu_threads": (0, None), "initial_loss_scale_power": (0, 127)}, self)
        check_ranges("training", {"max_consecutive_skips": (1, None), "max_rollbacks": (0, None)}, self)
        if self.spiky_loss_factor <= 1:
            raise ConfigError(f"training.spiky_loss_factor must be > 1 (a loss that many times the running mean is "
                              f"a spike), got {self.spiky_loss_factor}")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise ConfigError(f"--training.peak_tflops must be positive (or unset), got {self.peak_tflops}")
        if self.tensorboard_style not in ("megatron-lm", "megatron-deepspeed"):
            raise ConfigError(f"--training.tensorboard_style must be megatron-lm or megatron-deepspeed, got "
                              f"'{self.tensorboard_style}'")
        if self.eval_interval and self.eval_iters == 0:
            raise ConfigError(f"--eval-iters 0 with --eval-interval {self.eval_interval}: validation would average "
                              f"no batches; give --eval-iters N, or --eval-interval 0 to turn validation off")


def loss_scale_power(v: str) -> int:
    """Megatron's --initial-loss-scale (a scale, e.g. 65536) as DeepSpeed's initial_scale_power (16)."""
    scale = coerce(v, float, "--initial-loss-scale")  # a finite number, or a one-line ConfigError
    if scale <= 0:
        raise ConfigError(f"--initial-loss-scale must be a positive number (a power of two, e.g. 65536), got '{v}'")
    return int(round(math.log2(scale)))
