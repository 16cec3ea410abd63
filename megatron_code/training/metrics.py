"""Throughput, MFU and logging sinks (stdout line, JSONL file, TensorBoard)."""

from __future__ import annotations

import json
import os
import time

import torch

# Dense peak TFLOP/s per GPU for bf16/fp16 tensor cores (vendor datasheets; no sparsity).
GPU_PEAK_TFLOPS = {"H100": 989.0, "A100": 312.0, "A10": 125.0, "L4": 121.0, "V100": 125.0, "A6000": 155.0,
                   "4090": 165.0, "3090": 71.0, "T4": 65.0}


def measure_matmul_peak(dtype: torch.dtype = torch.float32, size: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of a square matmul on this device, best of `repeats` (the CPU's practical peak for MFU)."""
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


class MetricsSink:
    """Writes scalars to a JSONL file and TensorBoard (rank 0 only; other ranks get a sink that drops)."""

    def __init__(self, jsonl_path: str | None, tensorboard_dir: str | None, enabled: bool):
        self.enabled = enabled
        self.file = None
        self.tb = None
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

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb:
            self.tb.close()
