"""The job config: one dataclass per concern, composed; resolved and saved beside every checkpoint."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import yaml

from .base import ConfigError
from .batch_schedule import BatchSchedule, build_schedule
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
    # Multi-phase training (training/phases.py): each entry overrides sections of this job for one phase, plus
    # `name` and `optimizer_state` (keep | reset: carry the optimizer state into the phase, or start it fresh).
    phases: list = field(default_factory=list)

    def update(self, values: dict[str, Any]) -> None:
        """Merge a nested dict ({section: {key: value}}) into this config."""
        for section, sub in values.items():
            if section == "preset":
                self.preset = sub
                continue
            if section == "phases":
                if not isinstance(sub, list) or not all(isinstance(p, dict) for p in sub):
                    raise ConfigError("phases: expected a list of mappings (name:, optimizer_state:, and sections "
                                      "such as data:, training:, optim:)")
                self.phases = [dict(p) for p in sub]
                continue
            if section not in SECTIONS:
                raise ConfigError(f"unknown config section '{section}' (sections: {', '.join(SECTIONS)})")
            if not isinstance(sub, dict):
                raise ConfigError(f"config section '{section}' must be a mapping")
            getattr(self, section).update(sub, prefix=f"{section}.")

    def validate(self) -> None:
        for name in SECTIONS:
            getattr(self, name).validate()
        t = self.training
        if t.rampup_batch_size or t.step_batch_size_schedule or t.batch_size_schedule:
            self.batch_schedule()  # a malformed schedule is reported now, not when training starts
        self._check_adafactor()
        for name, _, job in self.phase_jobs():
            try:
                job.validate()
            except ConfigError as exc:
                raise ConfigError(f"phase {name}: {exc}") from None
        if t.calculate_per_token_loss and self.objective.objective == "mim":
            raise ConfigError("--calculate-per-token-loss is not implemented for the MIM objective (its loss adds "
                              "two directions' means and an agreement term); drop the flag or train AR/FIM")
        m, d = self.model, self.data
        if m.position_embedding == "learned" and d.seq_length > m.max_position_embeddings:
            raise ConfigError(f"--seq-length ({d.seq_length}) exceeds --max-position-embeddings "
                              f"({m.max_position_embeddings}) with learned positions: raise the latter")
        tp = self.parallel.tensor_parallel
        if m.num_attention_heads % tp:
            raise ConfigError(f"--tensor-model-parallel-size ({tp}) must divide num_attention_heads "
                              f"({m.num_attention_heads})")
        if not _kv_heads_fit(m.num_kv_heads, tp):
            fits = [d for d in range(1, m.num_attention_heads + 1)
                    if m.num_attention_heads % d == 0 and _kv_heads_fit(m.num_kv_heads, d)]
            raise ConfigError(f"--tensor-model-parallel-size ({tp}) does not fit num_kv_heads ({m.num_kv_heads}): "
                              f"TP must divide the KV heads, or (fewer KV heads than TP ranks) be a multiple of them "
                              f"so each KV head is replicated on TP / num_kv_heads ranks; TP sizes that fit: "
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
        if m.ffn_hidden_size % tp:
            raise ConfigError(f"--tensor-model-parallel-size ({tp}) must divide ffn_hidden_size ({m.ffn_hidden_size})")
        if d.reset_attention_mask and self.objective.objective == "mim":
            raise ConfigError("--reset-attention-mask does not apply to MIM (its batches are built per direction): "
                              "drop the flag")
        if self.parallel.pipeline_parallel > m.num_layers:
            raise ConfigError(f"--pipeline-model-parallel-size ({self.parallel.pipeline_parallel}) exceeds "
                              f"num_layers ({m.num_layers})")

    def batch_schedule(self) -> BatchSchedule:
        """The global batch of every step (config/batch_schedule.py); constant unless a schedule is given. Sets
        training.global_batch_size to the schedule's final batch when a schedule gives it."""
        t = self.training
        sched = build_schedule(t.global_batch_size, t.rampup_batch_size, t.step_batch_size_schedule,
                               t.batch_size_schedule, self.data.seq_length)
        t.global_batch_size = sched.final
        return sched

    def _check_adafactor(self) -> None:
        """Adafactor's clipping and parameter scaling use each parameter's whole-tensor RMS. DeepSpeed hands it whole
        parameters at ZeRO-0 (fp32, and the fp16/bf16 wrappers with one fp32 master per parameter), and one flat
        partition of many parameters at ZeRO-1/2 and in BF16_Optimizer (bf16 ZeRO-1, bf16 pipelines): there the
        trainer gives Adafactor the tensor boundaries (Adafactor.use_flat_partitions) and the per-tensor sums are
        all-reduced across DP. ZeRO-3 (parameters partitioned, not flat per group) and CPU offload (DeepSpeed's
        own CPU Adam path) are refused."""
        o, p = self.optim, self.parallel
        if o.optimizer != "adafactor":
            if o.weight_decay_lr_power is not None:
                raise ConfigError("optim.weight_decay_lr_power (weight decay = lr^p, PaLM's) is implemented for "
                                  "--optimizer adafactor only: unset it or use Adafactor")
            return
        if p.zero_stage > 2:
            raise ConfigError(f"--optimizer adafactor with --zero-stage {p.zero_stage}: Adafactor needs each "
                              "parameter's whole-tensor RMS, which it gets at ZeRO-0/1/2 (at 1/2 from the flat "
                              "partitions' tensor boundaries) but not from ZeRO-3's partitioned parameters; use "
                              "--zero-stage 1 or 2")
        if p.cpu_offload:
            raise ConfigError("--optimizer adafactor with CPU offload: DeepSpeed's offload path steps the flat "
                              "partitions on the CPU with its own Adam; drop the offload (--zero-stage 1 or 2 "
                              "shards Adafactor's state without it)")

    def resolve_batch(self, data_parallel_size: int) -> int:
        """Check global = micro x dp x accumulation for every batch of the schedule; return the number of
        accumulation steps of the final (or only) global batch."""
        t = self.training
        per_step = t.micro_batch_size * data_parallel_size
        if t.global_batch_size is None and not (t.rampup_batch_size or t.step_batch_size_schedule
                                                or t.batch_size_schedule):
            t.global_batch_size = per_step
        sched = self.batch_schedule()
        self.resolve_units()
        for size in sched.sizes(t.train_iters):
            if size % per_step:
                what = "--global-batch-size" if sched.kind == "constant" else f"the batch schedule's batch {size}"
                raise ConfigError(f"{what} ({size}) must be a multiple of micro-batch-size x data-parallel size "
                                  f"({t.micro_batch_size} x {data_parallel_size} = {per_step})")
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
                v is None for v in (o.lr_warmup_samples, o.lr_decay_samples, o.lr_warmup_tokens, o.lr_decay_tokens,
                                    o.lr_wsd_decay_samples)):
            return
        scheduled = t.rampup_batch_size or t.step_batch_size_schedule or t.batch_size_schedule
        if t.global_batch_size is None and not scheduled:
            raise ConfigError("lengths in samples/tokens need the global batch size: give --global-batch-size")
        sched = self.batch_schedule()
        batch, seq = t.global_batch_size, self.data.seq_length

        def samples(tokens: int | None, given: int | None) -> int | None:
            return -(-tokens // seq) if tokens is not None else given

        def iters(n: int) -> int:
            return -(-n // batch)

        run = [n for n in (t.train_samples, samples(t.train_tokens, None)) if n is not None]
        if run:
            # with a batch schedule: the steps its batches need to cover the samples (LR lengths below stay in
            # iterations of the final batch, the unit of the LR schedule's progress: training/lr_schedule.py)
            t.train_iters = sched.iterations_for(min(run))
        if o.lr_wsd_decay_samples is not None:
            o.lr_wsd_decay_iters = iters(o.lr_wsd_decay_samples)
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
            out[name] = getattr(self, name).to_dict()
        if self.phases:
            out["phases"] = [dict(p) for p in self.phases]
        return out

    def phase_jobs(self) -> list[tuple[str, str, "JobConfig"]]:
        """(name, optimizer_state, job) per phase: this job with the phase's sections merged over it."""
        out = []
        for i, phase in enumerate(self.phases):
            phase = dict(phase)
            name = str(phase.pop("name", f"phase{i}"))
            policy = str(phase.pop("optimizer_state", "keep"))
            if policy not in ("keep", "reset"):
                raise ConfigError(f"phases[{i}] ({name}): optimizer_state must be keep or reset, got '{policy}'")
            if not name or "/" in name:
                raise ConfigError(f"phases[{i}]: name '{name}' must be a non-empty name without '/'")
            base = self.to_dict()
            base.pop("phases", None)
            job = JobConfig.from_dict(base)
            try:
                job.update(phase)
            except ConfigError as exc:
                raise ConfigError(f"phases[{i}] ({name}): {exc}") from None
            out.append((name, policy, job))
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
