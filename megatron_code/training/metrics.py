"""Throughput, MFU and logging sinks (stdout line, JSONL file, TensorBoard)."""

from __future__ import annotations

import functools
import json
import math
import os
import time

import torch

# Dense peak TFLOP/s per GPU for bf16/fp16 tensor cores (vendor datasheets; no sparsity).
GPU_PEAK_TFLOPS = {"H100": 989.0, "A100": 312.0, "A10": 125.0, "L4": 121.0, "V100": 125.0, "A6000": 155.0,
                   "4090": 165.0, "3090": 71.0, "T4": 65.0}


def measure_matmul_peak(dtype: torch.dtype = torch.float32, size: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of a square matmul on this device, best of `repeats` (the CPU's practical peak for MFU). Measured once
    per process and thread count: the probe costs ~0.2 s of CPU (fp32, one thread) and the hardware does not change
    between the trainers one process builds (training phases; tests/distributed/_dp_train runs many jobs per rank)."""
    return _matmul_peak(dtype, size, repeats, torch.get_num_threads())


@functools.lru_cache(maxsize=None)
def _matmul_peak(dtype: torch.dtype, size: int, repeats: int, threads: int) -> float:
    gen = torch.Generator().manual_seed(0)  # never touch the global RNG: resume must stay exact
    a = torch.randn(size, size, generator=gen).to(dtype)
    b = torch.randn(size, size, generator=gen).to(dtype)
    torch.matmul(a, b)  # warm up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * size ** 3 / best


def peak_flops(precision: str, override_tflops: float | None) -> tuple[float, str]:
    """(peak FLOP/s per device, where it came from)."""
    if override_tflops:
        return override_tflops * 1e12, "--training.peak_tflops"
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, tf in GPU_PEAK_TFLOPS.items():
            if key in name:
                scale = 1.0 if precision in ("bf16", "fp16") else 0.5
                return tf * 1e12 * scale, f"table ({name})"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return measure_matmul_peak(dtype), f"CPU matmul probe ({dtype})"


class Throughput:
    """Tokens/s and MFU over a logging window."""

    def __init__(self, flops_per_token: float, peak: float, world_size: int):
        self.flops_per_token = flops_per_token
        self.peak = peak
        self.world_size = world_size
        self.reset()

    def reset(self) -> None:
        self.t0 = time.perf_counter()
        self.tokens = 0

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def rates(self) -> tuple[float, float]:
        dt = max(time.perf_counter() - self.t0, 1e-9)
        tps = self.tokens / dt
        mfu = tps * self.flops_per_token / (self.peak * self.world_size) if self.peak else 0.0
        return tps, mfu


# Megatron's TensorBoard names. Megatron-LM (megatron/training/training.py, training_log and evaluate_and_print_
# results) writes flat tags, each value also against consumed samples ("<tag> vs samples"); Megatron-DeepSpeed
# (megatron/training.py) puts each in a group "<group>/<tag>" and adds "vs tokens". Values without a samples
# series in Megatron-LM: iteration-time, throughput and the timers.
MEGATRON_DS_GROUPS = {"lm loss": "lm-loss-training", "learning-rate": "learning-rate", "batch-size": "batch-size",
                      "loss-scale": "loss-scale", "grad-norm": "grad-norm", "world-size": "world-size",
                      "iteration-time": "iteration-time"}
_NO_SERIES = ("iteration-time", "throughput")


def megatron_tags(name: str, style: str, validation: bool = False) -> list[tuple[str, str]]:
    """[(tag, x axis)] for one value; x axis is "iteration", "samples" or "tokens"."""
    if validation:  # name: "lm loss" or "lm loss ppl"
        base, ppl = (name[:-4], " ppl") if name.endswith(" ppl") else (name, "")
        if style == "megatron-deepspeed":
            tag = f"lm-loss-validation/{base} validation{ppl}"
            return [(tag, "iteration"), (tag + " vs samples", "samples"), (tag + " vs tokens", "tokens")]
        tag = f"{base} validation{ppl}"
        return [(tag, "iteration"), (tag + " vs samples", "samples")]
    if name.endswith("-time") and name != "iteration-time" or name == "throughput":
        return [(name, "iteration")]  # timers (Megatron's Timers.write) and throughput: per iteration only
    if style == "megatron-deepspeed":
        tag = f"{MEGATRON_DS_GROUPS.get(name, name)}/{name}"
        return [(tag, "iteration"), (tag + " vs samples", "samples"), (tag + " vs tokens", "tokens")]
    if name in _NO_SERIES:
        return [(name, "iteration")]
    return [(name, "iteration"), (name + " vs samples", "samples")]


def megatron_log_line(iteration: int, train_iters: int, consumed: int, ms_per_iter: float, tflops: float | None,
                      lr: float, batch_size: int, losses: dict[str, float], loss_scale: float, grad_norm: float,
                      skipped: int, nan_iters: int, when: str) -> str:
    """Megatron-LM's training_log line, field for field (its log parsers read it); our extra fields follow."""
    s = f" [{when}] iteration {iteration:8d}/{train_iters:8d} | consumed samples: {consumed:12d} |"
    s += f" elapsed time per iteration (ms): {ms_per_iter:.1f} |"
    if tflops is not None:
        s += f" throughput per GPU (TFLOP/s/GPU): {tflops:.1f} |"
    s += f" learning rate: {lr:.6E} | global batch size: {batch_size:5d} |"
    for key, value in losses.items():
        s += f" {key}: {value:.6E} |"
    s += f" loss scale: {loss_scale:.1f} |"
    if math.isfinite(grad_norm):
        s += f" grad norm: {grad_norm:.3f} |"
    s += f" number of skipped iterations: {skipped:3d} | number of nan iterations: {nan_iters:3d} |"
    return s


class WandbWriter:
    """Megatron's W&B logging (same scalar names as its TensorBoard tags, per iteration). Offline by default: the
    run is written under wandb_save_dir (or SAVE/wandb) and can be pushed later with `wandb sync`."""

    def __init__(self, training, config: dict):
        try:
            import wandb
        except ImportError:
            raise ImportError("--wandb-project needs the wandb package: pip install 'megatron_code[wandb]' (or "
                              "drop --wandb-project)") from None
        directory = training.wandb_save_dir or os.path.join(training.save or ".", "wandb")
        os.makedirs(directory, exist_ok=True)
        self.run = wandb.init(project=training.wandb_project, name=training.wandb_exp_name,
                              entity=training.wandb_entity, dir=directory, config=config,
                              mode=os.environ.get("WANDB_MODE", "offline"))

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


class MetricsSink:
    """Writes scalars to a JSONL file, TensorBoard and W&B (rank 0 only; other ranks get a sink that drops)."""

    def __init__(self, jsonl_path: str | None, tensorboard_dir: str | None, enabled: bool,
                 style: str = "megatron-lm", wandb: WandbWriter | None = None):
        self.enabled = enabled
        self.file = None
        self.tb = None
        self.style = style
        self.wandb = wandb
        if not enabled:
            return
        if jsonl_path:
            os.makedirs(os.path.dirname(jsonl_path) or ".", exist_ok=True)
            self.file = open(jsonl_path, "a")
        if tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(tensorboard_dir)

    def write(self, iteration: int, scalars: dict[str, float], kind: str = "train") -> None:
        if not self.enabled:
            return
        if self.file:
            self.file.write(json.dumps({"kind": kind, "iteration": iteration, **scalars}) + "\n")
            self.file.flush()
        if self.tb:
            for k, v in scalars.items():
                if v is not None:
                    self.tb.add_scalar(f"{kind}/{k}", v, iteration)

    def megatron(self, iteration: int, samples: int, tokens: int, scalars: dict[str, float],
                 validation: bool = False) -> None:
        """Scalars under Megatron's names (see megatron_tags), to TensorBoard and W&B."""
        if not self.enabled:
            return
        steps = {"iteration": iteration, "samples": samples, "tokens": tokens}
        if self.tb:
            for name, value in scalars.items():
                if value is None:
                    continue
                for tag, axis in megatron_tags(name, self.style, validation):
                    self.tb.add_scalar(tag, value, steps[axis])
        if self.wandb:
            names = {(f"{n[:-4]} validation ppl" if n.endswith(" ppl") else f"{n} validation") if validation else n: v
                     for n, v in scalars.items() if v is not None}
            self.wandb.log(names, iteration)

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.close()


def memory_gb() -> float:
    """Peak memory of this process in GiB: the accelerator's allocator on CUDA, else the peak resident set."""
    import resource

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux
