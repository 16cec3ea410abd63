"""Command line -> JobConfig. Three ways in, one result:

1. ``--preset NAME`` (applied first), then ``--config FILE.yaml`` files in order, then overrides in the order given;
2. dotted overrides ``--model.num_layers 4`` (any field of any section);
3. the Megatron / Megatron-DeepSpeed flags users already have in their launch scripts (table below).

Unknown flags are an error naming the closest known flag. Flags that Megatron needs but that have no effect here
(fusion switches, logging toggles we always do) are accepted and listed in ``CliArgs.notes``.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml

from .base import ConfigError
from .job import SECTIONS, JobConfig
from .presets import get_preset

# flag -> (arity, setter). arity: 0 (switch), 1 (one value), "+" (one or more values).
Setter = Callable[[dict[str, dict[str, Any]], Any], None]


def _set(path: str, transform: Callable[[Any], Any] | None = None) -> Setter:
    section, key = path.split(".")

    def setter(values: dict[str, dict[str, Any]], v: Any) -> None:
        values.setdefault(section, {})[key] = transform(v) if transform else v
    return setter


def _const(path: str, value: Any) -> Setter:
    s = _set(path)
    return lambda values, _v: s(values, value)


def _map(path: str, table: dict[str, Any], flag: str) -> Setter:
    def convert(v: str) -> Any:
        if v not in table:
            raise ConfigError(f"--{flag}: unknown value '{v}' (choose from {', '.join(table)})")
        return table[v]
    return _set(path, convert)


def _check_choice(flag: str, choices: tuple[str, ...]) -> Setter:
    """Validate a value that selects nothing here (we only read mmap .bin/.idx); sets no field."""
    def check(_values: dict[str, dict[str, Any]], v: Any) -> None:
        if v not in choices:
            raise ConfigError(f"--{flag}: unknown value '{v}' (supported: {', '.join(choices)})")
    return check


def _loss_scale_power(v: str) -> int:
    return int(round(math.log2(float(v))))


def _fim_rate(values: dict[str, dict[str, Any]], v: Any) -> None:
    """BigCode's convention: a positive --fim-rate turns FIM on."""
    values.setdefault("objective", {})["fim_rate"] = v
    if float(v) > 0:
        values["objective"]["objective"] = "fim"


MEGATRON_FLAGS: dict[str, tuple[Any, Setter]] = {
    # model
    "num-layers": (1, _set("model.num_layers")),
    "hidden-size": (1, _set("model.hidden_size")),
    "ffn-hidden-size": (1, _set("model.ffn_hidden_size")),
    "num-attention-heads": (1, _set("model.num_attention_heads")),
    "num-key-value-heads": (1, _set("model.num_kv_heads")),
    "kv-channels": (1, _set("model.head_dim")),
    "max-position-embeddings": (1, _set("model.max_position_embeddings")),
    "position-embedding-type": (1, _map("model.position_embedding", {
        "learned_absolute": "learned", "rope": "rope", "none": "none", "learned": "learned"},
        "position-embedding-type")),
    "use-rotary-position-embeddings": (0, _const("model.position_embedding", "rope")),
    "rotary-percent": (1, _set("model.rotary_percent")),
    "rotary-base": (1, _set("model.rotary_base")),
    "rope-theta": (1, _set("model.rotary_base")),
    "swiglu": (0, _const("model.activation", "swiglu")),
    "normalization": (1, _map("model.norm", {"LayerNorm": "layernorm", "RMSNorm": "rmsnorm"}, "normalization")),
    "layernorm-epsilon": (1, _set("model.norm_eps")),
    "norm-epsilon": (1, _set("model.norm_eps")),
    "untie-embeddings-and-output-weights": (0, _const("model.tie_embeddings", False)),
    "disable-bias-linear": (0, _const("model.bias", False)),
    "attention-dropout": (1, _set("model.attention_dropout")),
    "hidden-dropout": (1, _set("model.hidden_dropout")),
    "init-method-std": (1, _set("model.init_std")),
    "make-vocab-size-divisible-by": (1, _set("model.vocab_pad_multiple")),
    # training
    "micro-batch-size": (1, _set("training.micro_batch_size")),
    "global-batch-size": (1, _set("training.global_batch_size")),
    "train-iters": (1, _set("training.train_iters")),
    "seed": (1, _set("training.seed")),
    "fp16": (0, _const("training.precision", "fp16")),
    "bf16": (0, _const("training.precision", "bf16")),
    "initial-loss-scale": (1, _set("training.initial_loss_scale_power", _loss_scale_power)),
    "save": (1, _set("training.save")),
    "load": (1, _set("training.load")),
    "save-interval": (1, _set("training.save_interval")),
    "exit-interval": (1, _set("training.exit_interval")),
    "eval-interval": (1, _set("training.eval_interval")),
    "eval-iters": (1, _set("training.eval_iters")),
    "log-interval": (1, _set("training.log_interval")),
    "tensorboard-dir": (1, _set("training.tensorboard_dir")),
    # optimizer and schedule
    "optimizer": (1, _map("optim.optimizer", {"adam": "adamw", "adamw": "adamw"}, "optimizer")),
    "lr": (1, _set("optim.lr")),
    "min-lr": (1, _set("optim.min_lr")),
    "lr-decay-style": (1, _set("optim.lr_decay_style")),
    "lr-warmup-iters": (1, _set("optim.lr_warmup_iters")),
    "lr-warmup-fraction": (1, _set("optim.lr_warmup_fraction")),
    "lr-decay-iters": (1, _set("optim.lr_decay_iters")),
    "weight-decay": (1, _set("optim.weight_decay")),
    "clip-grad": (1, _set("optim.clip_grad")),
    "adam-beta1": (1, _set("optim.adam_beta1")),
    "adam-beta2": (1, _set("optim.adam_beta2")),
    "adam-eps": (1, _set("optim.adam_eps")),
    # data and tokenizer
    "data-path": ("+", _set("data.data_path")),
    "train-data-path": ("+", _set("data.train_data_path")),
    "valid-data-path": ("+", _set("data.valid_data_path")),
    "test-data-path": ("+", _set("data.test_data_path")),
    "split": (1, _set("data.split")),
    "seq-length": (1, _set("data.seq_length")),
    "data-cache-path": (1, _set("data.data_cache_path")),
    "data-impl": (1, _check_choice("data-impl", ("mmap", "infer"))),
    "eod-mask-loss": (0, _const("data.eod_mask_loss", True)),
    "reset-position-ids": (0, _const("data.reset_position_ids", True)),
    "num-workers": (1, _set("data.num_workers")),
    "mock-data": (0, _const("data.mock_data", True)),
    "tokenizer-type": (1, _set("data.tokenizer_type")),
    "tokenizer-model": (1, _set("data.tokenizer_model")),
    "vocab-file": (1, _set("data.vocab_file")),
    "merge-file": (1, _set("data.merge_file")),
    # objectives
    "fim-rate": (1, _fim_rate),
    "fim": (0, _const("objective.objective", "fim")),
    "fim-spm-rate": (1, _set("objective.fim_spm_rate")),
    "fim-fragment-rate": (1, _set("objective.fim_fragment_rate")),
    "fim-split-sample": (1, _set("objective.fim_split_token")),
    "mim": (0, _const("objective.objective", "mim")),
    "mim-beta": (1, _set("objective.mim_beta")),
    "mim-divergence": (1, _set("objective.mim_divergence")),
    # parallelism and DeepSpeed
    "tensor-model-parallel-size": (1, _set("parallel.tensor_parallel")),
    "pipeline-model-parallel-size": (1, _set("parallel.pipeline_parallel")),
    "no-pipeline-parallel": (0, _const("parallel.pipeline_parallel", 1)),
    "sequence-parallel": (0, _const("parallel.sequence_parallel", True)),
    "zero-stage": (1, _set("parallel.zero_stage")),
    "use-distributed-optimizer": (0, _const("parallel.zero_stage", 1)),
    "cpu-optimizer": (0, _const("parallel.cpu_offload", True)),
    "deepspeed_config": (1, _set("parallel.deepspeed_config")),
    "deepspeed-config": (1, _set("parallel.deepspeed_config")),
    "checkpoint-activations": (0, _const("parallel.activation_checkpoint_interval", 1)),
    "checkpoint-num-layers": (1, _set("parallel.activation_checkpoint_interval")),
    "recompute-granularity": (1, _map("parallel.activation_checkpoint_interval", {"full": 1, "selective": 1},
                                      "recompute-granularity")),
    "distributed-backend": (1, _set("parallel.backend")),
}

# Accepted for compatibility, no effect here (arity, why).
NOOP_FLAGS: dict[str, tuple[Any, str]] = {
    "deepspeed": (0, "DeepSpeed is always the engine"),
    "group-query-attention": (0, "GQA follows from --num-query-groups"),
    "use-flash-attn": (0, "the attention kernel is chosen automatically (flash-attn on CUDA when installed)"),
    "use-flash-attn-v2": (0, "the attention kernel is chosen automatically"),
    "no-query-key-layer-scaling": (0, "we always scale by 1/sqrt(head_dim) with fp32 softmax"),
    "apply-query-key-layer-scaling": (0, "we always scale by 1/sqrt(head_dim) with fp32 softmax"),
    "attention-softmax-in-fp32": (0, "softmax accumulates in fp32 already"),
    "no-masked-softmax-fusion": (0, "fusions are selected automatically"),
    "no-bias-gelu-fusion": (0, "fusions are selected automatically"),
    "no-bias-dropout-fusion": (0, "fusions are selected automatically"),
    "no-gradient-accumulation-fusion": (0, "fusions are selected automatically"),
    "no-async-tensor-model-parallel-allreduce": (0, "no effect on CPU/gloo"),
    "use-cpu-initialization": (0, "weights are initialized on the CPU when no GPU is present"),
    "log-timers-to-tensorboard": (0, "always logged"),
    "log-batch-size-to-tensorboard": (0, "always logged"),
    "log-validation-ppl-to-tensorboard": (0, "always logged"),
    "log-num-zeros-in-grad": (0, "not logged"),
    "log-params-norm": (0, "not logged"),
    "tensorboard-queue-size": (1, "queue size is managed by TensorBoard"),
    "DDP-impl": (1, "data parallelism is DeepSpeed's"),
    "deepspeed-activation-checkpointing": (0, "activation checkpointing follows --checkpoint-activations"),
    "partition-activations": (0, "not used on CPU"),
    "contigious-checkpointing": (0, "not used on CPU"),
    "synchronize-each-layer": (0, "not used on CPU"),
    "no-load-optim": (0, "not supported yet: optimizer state is always loaded"),
    "no-load-rng": (0, "not supported yet: RNG state is always loaded"),
}

# Megatron's --num-query-groups only takes effect together with --group-query-attention.
_QUERY_GROUPS = "num-query-groups"


@dataclass
class CliArgs:
    job: JobConfig
    print_config: bool = False
    local_rank: int | None = None
    notes: list[str] = field(default_factory=list)


def _split_flag(token: str) -> tuple[str, str | None]:
    body = token[2:]
    if "=" in body:
        name, value = body.split("=", 1)
        return name, value
    return body, None


def _is_value(token: str) -> bool:
    if not token.startswith("-"):
        return True
    try:
        float(token)
        return True
    except ValueError:
        return False


def _dotted_arity(name: str) -> Any:
    section, key = name.split(".", 1)
    if section not in SECTIONS:
        raise ConfigError(f"--{name}: unknown section '{section}' (sections: {', '.join(SECTIONS)})")
    fields = SECTIONS[section].__dataclass_fields__
    if key not in fields:
        close = difflib.get_close_matches(key, list(fields), n=3)
        hint = f" (did you mean {', '.join(f'--{section}.{c}' for c in close)}?)" if close else ""
        raise ConfigError(f"unknown option --{name}{hint}")
    return "+" if str(fields[key].type).startswith("list") else 1


def _unknown(name: str) -> ConfigError:
    known = list(MEGATRON_FLAGS) + list(NOOP_FLAGS) + ["preset", "config", "print-config", _QUERY_GROUPS]
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join('--' + c for c in close)}?" if close else ""
    return ConfigError(f"unknown flag --{name}{hint} (use --section.key VALUE for any config field; "
                       f"--print-config shows them)")


def parse_args(argv: list[str]) -> CliArgs:
    """Parse a command line into a validated JobConfig (vocab size may still come from the tokenizer)."""
    preset: str | None = None
    config_files: list[str] = []
    overrides: list[tuple[Setter, Any]] = []
    out = CliArgs(job=JobConfig())
    query_groups: str | None = None
    gqa = False
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--"):
            raise ConfigError(f"unexpected argument '{token}' (flags start with --)")
        name, inline = _split_flag(token)
        if name in ("local_rank", "local-rank"):
            arity = 1
        elif name in ("preset", "config", _QUERY_GROUPS):
            arity = 1
        elif name == "print-config":
            arity = 0
        elif "." in name:
            arity = _dotted_arity(name)
        elif name in MEGATRON_FLAGS:
            arity = MEGATRON_FLAGS[name][0]
        elif name in NOOP_FLAGS:
            arity = NOOP_FLAGS[name][0]
        else:
            raise _unknown(name)
        values: list[str] = []
        i += 1
        if inline is not None:
            values = [inline]
        elif arity != 0:
            while i < len(argv) and _is_value(argv[i]) and (arity == "+" or not values):
                values.append(argv[i])
                i += 1
            if not values:
                raise ConfigError(f"--{name} needs a value")
        value: Any = values if arity == "+" else (values[0] if values else True)
        if name in ("local_rank", "local-rank"):
            out.local_rank = int(value)
        elif name == "preset":
            preset = value
        elif name == "config":
            config_files.append(value)
        elif name == "print-config":
            out.print_config = True
        elif name == _QUERY_GROUPS:
            query_groups = value
        elif "." in name:
            overrides.append((_set(name), value))
        elif name in MEGATRON_FLAGS:
            overrides.append((MEGATRON_FLAGS[name][1], value))
        else:
            gqa = gqa or name == "group-query-attention"
            out.notes.append(f"--{name}: accepted, no effect ({NOOP_FLAGS[name][1]})")
    if query_groups is not None:
        if gqa:
            overrides.append((_set("model.num_kv_heads"), query_groups))
        else:
            out.notes.append("--num-query-groups ignored without --group-query-attention (as in Megatron)")

    job = out.job
    if preset is not None:
        values = get_preset(preset)
        values.pop("source", None)
        job.update(values)
        job.preset = preset
    for path in config_files:
        try:
            with open(path) as f:
                loaded = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise ConfigError(f"--config {path}: file not found") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--config {path}: not valid YAML ({exc})") from None
        job.update(loaded)
    for setter, value in overrides:
        one: dict[str, dict[str, Any]] = {}
        setter(one, value)
        job.update(one)
    job.validate()
    return out
