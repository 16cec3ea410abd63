"""The job config: one dataclass per concern, composed; resolved and saved beside every checkpoint."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from .base import ConfigError
from .data import DataConfig, ObjectiveConfig
from .model import ModelConfig
from .optim import OptimConfig
from .parallel import ParallelConfig
from .training import TrainingConfig

SECTIONS = {"model": ModelConfig, "parallel": ParallelConfig, "optim": OptimConfig, "data": DataConfig,
            "objective": ObjectiveConfig, "training": TrainingConfig}


@dataclass
class JobConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    preset: str | None = None

    def update(self, values: dict[str, Any]) -> None:
        """Merge a nested dict ({section: {key: value}}) into this config."""
        for section, sub in values.items():
            if section == "preset":
                self.preset = sub
                continue
            if section not in SECTIONS:
                raise ConfigError(f"unknown config section '{section}' (sections: {', '.join(SECTIONS)})")
            if not isinstance(sub, dict):
                raise ConfigError(f"config section '{section}' must be a mapping")
            getattr(self, section).update(sub, prefix=f"{section}.")

    def validate(self) -> None:
        for name in SECTIONS:
            getattr(self, name).validate()
        m, d = self.model, self.data
        if m.position_embedding == "learned" and d.seq_length > m.max_position_embeddings:
            raise ConfigError(f"--seq-length ({d.seq_length}) exceeds --max-position-embeddings "
                              f"({m.max_position_embeddings}) with learned positions: raise the latter")
        tp = self.parallel.tensor_parallel
        if m.num_attention_heads % tp:
            raise ConfigError(f"--tensor-model-parallel-size ({tp}) must divide num_attention_heads "
                              f"({m.num_attention_heads})")
        if m.ffn_size % tp:
            raise ConfigError(f"--tensor-model-parallel-size ({tp}) must divide ffn_hidden_size ({m.ffn_size})")
        if self.parallel.pipeline_parallel > m.num_layers:
            raise ConfigError(f"--pipeline-model-parallel-size ({self.parallel.pipeline_parallel}) exceeds "
                              f"num_layers ({m.num_layers})")

    def resolve_batch(self, data_parallel_size: int) -> int:
        """Check global = micro x dp x accumulation; return the number of accumulation steps."""
        t = self.training
        per_step = t.micro_batch_size * data_parallel_size
        if t.global_batch_size is None:
            t.global_batch_size = per_step
        if t.global_batch_size % per_step:
            raise ConfigError(f"--global-batch-size ({t.global_batch_size}) must be a multiple of micro-batch-size x "
                              f"data-parallel size ({t.micro_batch_size} x {data_parallel_size} = {per_step})")
        return t.global_batch_size // per_step

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"preset": self.preset}
        for name in SECTIONS:
            out[name] = dataclasses.asdict(getattr(self, name))
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "JobConfig":
        job = cls()
        job.update(values)
        return job

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            if path.endswith(".json"):
                json.dump(self.to_dict(), f, indent=2)
            else:
                f.write(self.to_yaml())

    @classmethod
    def load(cls, path: str) -> "JobConfig":
        with open(path) as f:
            values = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
        return cls.from_dict(values or {})
