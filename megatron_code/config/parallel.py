"""Parallel layout: tensor x pipeline x data parallelism, ZeRO stage, activation checkpointing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .base import ConfigBase, ConfigError


@dataclass
class ParallelConfig(ConfigBase):
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    sequence_parallel: bool = False
    zero_stage: int = 0
    # ZeRO-Offload: optimizer state and step on the CPU (DeepSpeed `offload_optimizer`).
    cpu_offload: bool = False
    # DeepSpeed PipelineModule partition method: "parameters", "uniform" or "type:<regex>".
    pipeline_partition: str = "parameters"
    # Recompute activations every N blocks (0 = off).
    activation_checkpoint_interval: int = 0
    # A DeepSpeed JSON config given by the user: used as given, with our batch/precision keys checked against it.
    deepspeed_config: Optional[str] = None
    # "auto": nccl when CUDA is available, gloo otherwise.
    backend: str = "auto"
    # Megatron's --distributed-timeout-minutes (its default, 10): the process groups' collective timeout; the
    # heartbeat (parallel/lifecycle.py) names a silent rank and stops every other one after half of it.
    distributed_timeout_minutes: float = 10.0

    def validate(self) -> None:
        for name in ("tensor_parallel", "pipeline_parallel"):
            if getattr(self, name) < 1:
                raise ConfigError(f"parallel.{name} must be >= 1")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"--zero-stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.pipeline_parallel > 1 and self.zero_stage > 1:
            raise ConfigError(
                f"ZeRO stage {self.zero_stage} cannot be combined with pipeline parallelism "
                f"(PP={self.pipeline_parallel}): DeepSpeed's pipeline engine supports ZeRO-1 only. Use --zero-stage 1 "
                "with PP, or PP=1 with ZeRO-2/3")
        if self.sequence_parallel and self.tensor_parallel == 1:
            raise ConfigError("--sequence-parallel needs --tensor-model-parallel-size > 1")
        if self.backend not in ("auto", "gloo", "nccl"):
            raise ConfigError(f"parallel.backend must be auto, gloo or nccl, got '{self.backend}'")
        method = self.pipeline_partition
        if method not in ("parameters", "uniform") and not method.startswith("type:"):
            raise ConfigError(f"parallel.pipeline_partition must be 'parameters', 'uniform' or 'type:<regex>', "
                              f"got '{method}'")
        if self.distributed_timeout_minutes <= 0:
            raise ConfigError(f"--distributed-timeout-minutes must be positive, got {self.distributed_timeout_minutes}")
        if self.activation_checkpoint_interval < 0:
            raise ConfigError("parallel.activation_checkpoint_interval must be >= 0")
