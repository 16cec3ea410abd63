"""The job config: one dataclass per concern, composed; resolved and saved beside every checkpoint."""

from __future__ import annotations

import dataclasses
import json
import math
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
        if not _kv_heads_fit(m.kv_heads, tp):
            fits = [d for d in range(1, m.num_attention_heads + 1)
                    if m.num_attention_heads % d == 0 and _kv_heads_fit(m.kv_heads, d)]
            raise ConfigError(f"--tensor-model-parallel-size ({tp}) does not fit num_kv_heads ({m.kv_heads}): TP must "
                              f"divide the KV heads, or (fewer KV heads than TP ranks) be a multiple of them so each "
                              f"KV head is replicated on TP / num_kv_heads ranks; TP sizes that fit: "
                              f"{', '.join(map(str, fits))}")
        # We pad the vocabulary to a multiple of vocab_pad_multiple only, NOT of vocab_pad_multiple x TP as Megatron
        # does: the embedding shape then does not depend on TP, so a checkpoint reshards to any TP without
        # touching the vocabulary. The price is this check: the padded size must split evenly over the TP ranks.
        if m.vocab_size is not None and m.padded_vocab_size % tp:
            need = m.vocab_pad_multiple * tp // math.gcd(m.vocab_pad_multiple, tp)
            raise ConfigError(f"the padded vocabulary ({m.padded_vocab_size} rows: {m.vocab_size} rounded up to a "
                              f"multiple of --make-vocab-size-divisible-by {m.vocab_pad_multiple}) does not split "
                              f"over --tensor-model-parallel-size {tp}: use --make-vocab-size-divisible-by {need} "
                              f"(a multiple of both)")
        if m.ffn_size % tp:
            raise ConfigError(f"--tensor-model-parallel-size ({tp}) must divide ffn_hidden_size ({m.ffn_size})")
        if d.reset_attention_mask and self.objective.objective == "mim":
            raise ConfigError("--reset-attention-mask does not apply to MIM (its batches are built per direction): "
                              "drop the flag")
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
        self.resolve_units()
        return t.global_batch_size // per_step

    def resolve_units(self) -> None:
        """Turn run and LR-schedule lengths given in samples or tokens into iterations (needs the global batch
        size: call after `resolve_batch`, which calls this). Idempotent: the sample/token fields are kept as given
        and the iteration fields are recomputed from them.

        With B = global batch size and S = seq_length, every conversion rounds UP (an iteration is a whole
        optimizer step, and rounding up never ends a phase before the requested amount was seen):

            samples -> iters:  ceil(samples / B)
            tokens  -> iters:  ceil(ceil(tokens / S) / B)  (= ceil(tokens / (S x B)))

        - train_iters: from train_samples and/or train_tokens; with both, the smaller resulting sample count (the
          run ends at whichever limit comes first, as in Megatron-DeepSpeed). Megatron itself floors
          train_samples / B; we round up so at least the requested samples are trained on.
        - lr_decay_iters / lr_warmup_iters: from lr_*_tokens when given, else from lr_*_samples (Megatron-DeepSpeed
          lets tokens take precedence). A warmup given in samples/tokens replaces lr_warmup_fraction.
        """
        t, o = self.training, self.optim
        if t.train_samples is None and t.train_tokens is None and all(
                v is None for v in (o.lr_warmup_samples, o.lr_decay_samples, o.lr_warmup_tokens, o.lr_decay_tokens)):
            return
        if t.global_batch_size is None:
            raise ConfigError("lengths in samples/tokens need the global batch size: give --global-batch-size")
        batch, seq = t.global_batch_size, self.data.seq_length

        def samples(tokens: int | None, given: int | None) -> int | None:
            return -(-tokens // seq) if tokens is not None else given

        def iters(n: int) -> int:
            return -(-n // batch)

        run = [n for n in (t.train_samples, samples(t.train_tokens, None)) if n is not None]
        if run:
            t.train_iters = iters(min(run))
        decay = samples(o.lr_decay_tokens, o.lr_decay_samples)
        if decay is not None:
            o.lr_decay_iters = iters(decay)
        warmup = samples(o.lr_warmup_tokens, o.lr_warmup_samples)
        if warmup is not None:
            o.lr_warmup_iters = iters(warmup)
            o.lr_warmup_fraction = None

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


def _kv_heads_fit(kv_heads: int, tp: int) -> bool:
    """Each TP rank holds kv_heads / tp KV heads, or (kv_heads < tp) one KV head replicated on tp / kv_heads ranks."""
    return kv_heads % tp == 0 or (kv_heads < tp and tp % kv_heads == 0)
