"""Command line -> JobConfig. Three ways in, one result.

Precedence, lowest first (each layer overrides what came before it):

1. ``--preset NAME`` (wherever it stands on the line);
2. ``--config FILE.yaml`` files, in the order given. A file holding ``preset: X`` applies preset X first and then
   its own values, at the file's position: a later file's preset overrides an earlier file's values;
3. the command line: dotted overrides (``--model.num_layers 4``, any field of any section) and the Megatron /
   Megatron-DeepSpeed flags users already have in their launch scripts (table below), in the order given.

Lengths that can be given in several units (run length: --train-iters | --train-samples / --train-tokens; LR
decay: --lr-decay-iters | --lr-decay-samples / --lr-decay-tokens; LR warmup: --lr-warmup-iters /
--lr-warmup-fraction | --lr-warmup-samples / --lr-warmup-tokens): on the command line, one kind of unit per
length (both is an error, as in Megatron). A layer that sets a length replaces all of that length's fields from
earlier layers. A file may hold both kinds (every saved config does): samples/tokens then win, because
JobConfig.resolve_units() derives the iterations from them once the global batch size is known.

Unknown flags are an error naming the closest known flag. Flags that Megatron needs but that have no effect here
(fusion switches, logging toggles we always do) are accepted and listed in ``CliArgs.notes``; flags for features
we do not have are an error that says so.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml

from .base import ConfigError
from .data import TOKENIZER_TYPES
from .deepspeed_json import merge_deepspeed_json
from .data_args import check_data_args_exclusive, read_data_args_file, read_per_split_data_args_file
from .job import SECTIONS, JobConfig
from .megatron_flags import ERROR_FLAGS, NOOP_FLAGS, OFF_FLAGS
from .presets import get_preset
from .saved import checkpoint_config_path
from .recipe_flags import AUTO_FLAGS, FIELD_FLAGS, UNIT_GROUPS as RECIPE_UNIT_GROUPS
from .training import loss_scale_power

# flag -> (arity, setter). arity: 0 (switch), 1 (one value), "+" (one or more values).
Setter = Callable[[dict[str, dict[str, Any]], Any], None]


def _set(path: str, transform: Callable[[Any], Any] | None = None) -> Setter:
    section, key = path.split(".")

    def setter(values: dict[str, dict[str, Any]], v: Any) -> None:
        values.setdefault(section, {})[key] = transform(v) if transform else v
    setter.target = path  # for the flag table (tests/fixtures/megatron_flags.tsv)
    return setter


def _const(path: str, value: Any) -> Setter:
    s = _set(path)

    def setter(values: dict[str, dict[str, Any]], _v: Any) -> None:
        s(values, value)
    setter.target = f"{path} = {value!r}"
    return setter


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


# Megatron and Megatron-DeepSpeed names for our tokenizer types (Megatron-DeepSpeed's HFTokenizer loads a Hugging
# Face tokenizer like Megatron-LM's HuggingFaceTokenizer; GPTSentencePieceTokenizer is a SentencePiece .model).
# Megatron-LM main's Llama2Tokenizer is a SentencePiece model tokenized without BOS, ending documents with </s>
# (megatron/core/tokenizers/utils/build_tokenizer.py: SP_TOKENIZERS), i.e. our SentencePieceTokenizer.
TOKENIZER_ALIASES = {**{name: name for name in TOKENIZER_TYPES}, "HFTokenizer": "HuggingFaceTokenizer",
                     "GPTSentencePieceTokenizer": "SentencePieceTokenizer", "Llama2Tokenizer": "SentencePieceTokenizer"}


def _fim_rate(values: dict[str, dict[str, Any]], v: Any) -> None:
    """BigCode's convention: a positive --fim-rate turns FIM on."""
    values.setdefault("objective", {})["fim_rate"] = v
    if float(v) > 0:
        values["objective"]["objective"] = "fim"


def _hidden_dropout(values: dict[str, dict[str, Any]], v: Any) -> None:
    """Megatron has one flag for both: its embedding dropout is --hidden-dropout."""
    values.setdefault("model", {})["hidden_dropout"] = v
    values["model"]["embedding_dropout"] = v


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
    # --no-position-embedding is handled in parse_args (it must not undo --use-rotary-position-embeddings).
    "use-rotary-position-embeddings": (0, _const("model.position_embedding", "rope")),
    "rotary-percent": (1, _set("model.rotary_percent")),
    "rotary-base": (1, _set("model.rotary_base")),
    "rope-theta": (1, _set("model.rotary_base")),
    "rotary-position-embeddings-theta": (1, _set("model.rotary_base")),  # Megatron-DeepSpeed's name
    "swiglu": (0, _const("model.activation", "swiglu")),
    # Megatron-LM spells them LayerNorm/RMSNorm, Megatron-DeepSpeed's Llama scripts layernorm/rmsnorm.
    "normalization": (1, _map("model.norm", {"LayerNorm": "layernorm", "RMSNorm": "rmsnorm", "layernorm": "layernorm",
                                             "rmsnorm": "rmsnorm"}, "normalization")),
    "layernorm-epsilon": (1, _set("model.norm_eps")),
    "norm-epsilon": (1, _set("model.norm_eps")),
    "untie-embeddings-and-output-weights": (0, _const("model.tie_embeddings", False)),
    "disable-bias-linear": (0, _const("model.bias", False)),
    "attention-dropout": (1, _set("model.attention_dropout")),
    "hidden-dropout": (1, _hidden_dropout),
    "init-method-std": (1, _set("model.init_std")),
    "make-vocab-size-divisible-by": (1, _set("model.vocab_pad_multiple")),
    # training
    "micro-batch-size": (1, _set("training.micro_batch_size")),
    "global-batch-size": (1, _set("training.global_batch_size")),
    "train-iters": (1, _set("training.train_iters")),
    "train-samples": (1, _set("training.train_samples")),
    "train-tokens": (1, _set("training.train_tokens")),
    "exit-duration-in-mins": (1, _set("training.exit_duration_mins")),
    "seed": (1, _set("training.seed")),
    "fp16": (0, _const("training.precision", "fp16")),
    "bf16": (0, _const("training.precision", "bf16")),
    "loss-scale": (1, _set("training.loss_scale")),
    "initial-loss-scale": (1, _set("training.initial_loss_scale_power", loss_scale_power)),
    "loss-scale-window": (1, _set("training.loss_scale_window")),
    "hysteresis": (1, _set("training.hysteresis")),
    "min-loss-scale": (1, _set("training.min_loss_scale")),
    "save": (1, _set("training.save")),
    "load": (1, _set("training.load")),
    "no-save-optim": (0, _const("training.save_optim", False)),
    "no-load-optim": (0, _const("training.load_optim", False)),
    "no-load-rng": (0, _const("training.load_rng", False)),
    "finetune": (0, _const("training.finetune", True)),
    "save-interval": (1, _set("training.save_interval")),
    "exit-interval": (1, _set("training.exit_interval")),
    "eval-interval": (1, _set("training.eval_interval")),
    "eval-iters": (1, _set("training.eval_iters")),
    "log-interval": (1, _set("training.log_interval")),
    "tensorboard-dir": (1, _set("training.tensorboard_dir")),
    # DeepSpeed is always the engine; a Megatron-DeepSpeed line (it passes --deepspeed) gets its TensorBoard names.
    "deepspeed": (0, _const("training.tensorboard_style", "megatron-deepspeed")),
    "universal-checkpoint": (0, _const("training.universal_checkpoint", True)),
    "load-universal": (0, _const("training.universal_checkpoint", True)),
    "wandb-project": (1, _set("training.wandb_project")),
    "wandb-exp-name": (1, _set("training.wandb_exp_name")),
    "wandb-save-dir": (1, _set("training.wandb_save_dir")),
    "wandb-entity": (1, _set("training.wandb_entity")),
    "check-for-spiky-loss": (0, _const("training.check_for_spiky_loss", True)),
    "rollback-on-nonfinite": (0, _const("training.rollback_on_nonfinite", True)),
    # optimizer and schedule
    "optimizer": (1, _map("optim.optimizer", dict(adam="adamw", adamw="adamw", adafactor="adafactor"), "optimizer")),
    "lr": (1, _set("optim.lr")),
    "min-lr": (1, _set("optim.min_lr")),
    "decoupled-lr": (1, _set("optim.decoupled_lr")),
    "decoupled-min-lr": (1, _set("optim.decoupled_min_lr")),
    "lr-decay-style": (1, _set("optim.lr_decay_style")),
    "lr-warmup-iters": (1, _set("optim.lr_warmup_iters")),
    "lr-warmup-fraction": (1, _set("optim.lr_warmup_fraction")),
    "lr-decay-iters": (1, _set("optim.lr_decay_iters")),
    "lr-warmup-samples": (1, _set("optim.lr_warmup_samples")),
    "lr-decay-samples": (1, _set("optim.lr_decay_samples")),
    "lr-warmup-tokens": (1, _set("optim.lr_warmup_tokens")),
    "lr-decay-tokens": (1, _set("optim.lr_decay_tokens")),
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
    "calculate-per-token-loss": (0, _const("training.calculate_per_token_loss", True)),
    "apply-layernorm-1p": (0, _const("model.norm_zero_centered", True)),
    "reset-position-ids": (0, _const("data.reset_position_ids", True)),
    "reset-attention-mask": (0, _const("data.reset_attention_mask", True)),
    "num-workers": (1, _set("data.num_workers")),
    "dataloader-type": (1, _map("data.dataloader_type", {"single": "single", "cyclic": "cyclic"},
                                "dataloader-type")),
    "no-data-sharding": (0, _const("data.data_sharding", False)),
    "mock-data": (0, _const("data.mock_data", True)),
    "tokenizer-type": (1, _map("data.tokenizer_type", TOKENIZER_ALIASES, "tokenizer-type")),
    "tokenizer-model": (1, _set("data.tokenizer_model")),
    "vocab-file": (1, _set("data.vocab_file")),
    "merge-file": (1, _set("data.merge_file")),
    "vocab-size": (1, _set("model.vocab_size")),  # NullTokenizer's size; TikTokenizer's cap (Megatron's meaning)
    "tiktoken-pattern": (1, _set("data.tiktoken_pattern")),
    "tiktoken-num-special-tokens": (1, _set("data.tiktoken_num_special_tokens")),
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
    "model-parallel-size": (1, _set("parallel.tensor_parallel")),  # Megatron's name before pipelines existed
    "pipeline-model-parallel-size": (1, _set("parallel.pipeline_parallel")),
    # --no-pipeline-parallel is handled in parse_args (it wins wherever it stands, as in Megatron-DeepSpeed).
    # --sequence-parallel with TP=1: parse_args turns it off with a note, as Megatron does.
    "sequence-parallel": (0, _const("parallel.sequence_parallel", True)),
    "zero-stage": (1, _set("parallel.zero_stage")),
    "use-distributed-optimizer": (0, _const("parallel.zero_stage", 1)),
    "cpu-optimizer": (0, _const("parallel.cpu_offload", True)),
    "deepspeed_config": (1, _set("parallel.deepspeed_config")),
    "deepspeed-config": (1, _set("parallel.deepspeed_config")),
    # --checkpoint-activations / --recompute-* are handled in parse_args (they combine with a layer count).
    "distributed-backend": (1, _set("parallel.backend")),
    "distributed-timeout-minutes": (1, _set("parallel.distributed_timeout_minutes")),
}

MEGATRON_FLAGS.update({flag: (arity, _set(path)) for flag, (arity, path) in FIELD_FLAGS.items()})


def _or_auto(flag: str, setter: Setter) -> Setter:
    """`--lr auto` etc.: turn the rule on (a number given later on the line turns it off again)."""
    on, off = _const(AUTO_FLAGS[flag], True), _const(AUTO_FLAGS[flag], False)

    def set_or_auto(values: dict[str, dict[str, Any]], v: Any) -> None:
        if v == "auto":
            on(values, v)
        else:
            off(values, v)
            setter(values, v)
    set_or_auto.target = f"{getattr(setter, 'target', '?')} (or 'auto': {AUTO_FLAGS[flag]})"
    return set_or_auto


MEGATRON_FLAGS.update({flag: (1, _or_auto(flag, MEGATRON_FLAGS[flag][1])) for flag in AUTO_FLAGS})
# Flags whose effect depends on other flags of the same line: handled by _LineState (name -> arity).
_STATEFUL_FLAGS: dict[str, Any] = {
    "checkpoint-activations": 0, "checkpoint-num-layers": 1, "recompute-activations": 0,
    "recompute-granularity": 1, "recompute-method": 1, "recompute-num-layers": 1,
    "no-position-embedding": 0, "no-pipeline-parallel": 0,
    "data-args-path": 1, "per-split-data-args-path": 1,
}

_DATA_PATH_FLAGS = ("data-path", "train-data-path", "valid-data-path", "test-data-path")

# Length groups: (what, fields counted in iterations, fields in samples/tokens); see the module docstring.
_UNIT_GROUPS = (
    ("run length", ("training.train_iters",), ("training.train_samples", "training.train_tokens")),
    ("LR decay length", ("optim.lr_decay_iters",), ("optim.lr_decay_samples", "optim.lr_decay_tokens")),
    ("LR warmup length", ("optim.lr_warmup_iters", "optim.lr_warmup_fraction"),
     ("optim.lr_warmup_samples", "optim.lr_warmup_tokens")),
) + RECIPE_UNIT_GROUPS

# Megatron's --num-query-groups only takes effect together with --group-query-attention.
_QUERY_GROUPS = "num-query-groups"


@dataclass
class CliArgs:
    job: JobConfig
    print_config: bool = False
    local_rank: int | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class _LineState:
    """What the flags of one command line say together (Megatron reads them all before acting)."""
    query_groups: str | None = None
    gqa: bool = False
    checkpointing: bool = False  # --checkpoint-activations / --recompute-activations / --recompute-granularity
    chunk: int | None = None  # --checkpoint-num-layers / --recompute-num-layers
    rope: bool = False  # rotary positions requested on this line
    no_pipeline: bool = False
    sequence_parallel: bool = False
    data_args_path: str | None = None  # --data-args-path
    split_args_path: str | None = None  # --per-split-data-args-path
    data_flags: set[str] = field(default_factory=set)  # which of _DATA_PATH_FLAGS the line gives
    precisions: set[str] = field(default_factory=set)  # --fp16 / --bf16 given on the line


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
    key = SECTIONS[section].ALIASES.get(key.replace("-", "_"), key)  # other names for a field (config/base.py)
    if key not in fields:
        close = difflib.get_close_matches(key, list(fields), n=3)
        hint = f" (did you mean {', '.join(f'--{section}.{c}' for c in close)}?)" if close else ""
        raise ConfigError(f"unknown option --{name}{hint}")
    return "+" if str(fields[key].type).startswith("list") else 1


def _unknown(name: str) -> ConfigError:
    known = (list(MEGATRON_FLAGS) + list(NOOP_FLAGS) + list(_STATEFUL_FLAGS) + list(ERROR_FLAGS) + list(OFF_FLAGS)
             + ["preset", "config", "print-config", _QUERY_GROUPS])
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join('--' + c for c in close)}?" if close else ""
    return ConfigError(f"unknown flag --{name}{hint} (use --section.key VALUE for any config field; "
                       f"--print-config shows them)")


def _arity(name: str) -> Any:
    if name in ("local_rank", "local-rank", "preset", "config", _QUERY_GROUPS):
        return 1
    if name == "print-config":
        return 0
    if "." in name:
        return _dotted_arity(name)
    for table in (MEGATRON_FLAGS, NOOP_FLAGS, ERROR_FLAGS, OFF_FLAGS):
        if name in table:
            return table[name][0]
    if name in _STATEFUL_FLAGS:
        return _STATEFUL_FLAGS[name]
    raise _unknown(name)


def _layer_count(flag: str, value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"--{flag} must be a positive number of layers, got '{value}'")
    return n


def _stateful_flag(name: str, value: Any, state: _LineState, overrides: list[tuple[Setter, Any]],
                   notes: list[str]) -> None:
    """Flags that combine with others. Setters that read `state` run after the whole line is read."""
    interval = _set("parallel.activation_checkpoint_interval")
    if name in ("checkpoint-num-layers", "recompute-num-layers"):
        state.chunk = _layer_count(name, value)
    elif name == "checkpoint-activations" or (name == "recompute-granularity" and value == "full"):
        # Megatron: checkpoint chunks of --checkpoint-num-layers (default 1) blocks.
        state.checkpointing = True
        overrides.append((lambda values, _v: interval(values, state.chunk or 1), None))
    elif name == "recompute-activations" or (name == "recompute-granularity" and value == "selective"):
        state.checkpointing = True
        overrides.append((lambda values, _v: interval(values, 1), None))
        notes.append(f"--{name}: Megatron's selective recompute (attention core only) is done as full "
                     "recompute of every block (activation_checkpoint_interval 1): same memory bound, more compute")
    elif name == "recompute-granularity":
        raise ConfigError(f"--recompute-granularity: unknown value '{value}' (choose from full, selective)")
    elif name == "recompute-method":
        if value not in ("uniform", "block"):
            raise ConfigError(f"--recompute-method: unknown value '{value}' (choose from uniform, block)")
        if value == "block":
            notes.append("--recompute-method block: done as uniform (every block in chunks of "
                         "--recompute-num-layers is recomputed, not only the first ones of each stage)")
    elif name == "no-position-embedding":
        # Megatron-DeepSpeed: drops the learned absolute table; rotary positions asked for on the line stay.
        overrides.append((lambda values, _v: None if state.rope else
                          _set("model.position_embedding")(values, "none"), None))
    elif name == "no-pipeline-parallel":
        state.no_pipeline = True
    elif name == "data-args-path":
        state.data_args_path = value
    elif name == "per-split-data-args-path":
        state.split_args_path = value


def _unit_fields(values: dict[str, Any]) -> set[str]:
    return {f"{section}.{key.replace('-', '_')}" for section, sub in values.items() if isinstance(sub, dict)
            for key in sub}


def _apply_layer(job: JobConfig, values: dict[str, Any], source: str, one_unit: bool = False) -> None:
    """Merge one layer (preset, file or command line) into `job`: a layer that sets a length replaces every field
    of that length from earlier layers; with `one_unit` (the command line) iterations and samples/tokens for the
    same length are an error."""
    given = _unit_fields(values)
    for what, iteration_fields, unit_fields in _UNIT_GROUPS:
        in_iters = [f for f in iteration_fields if f in given]
        in_units = [f for f in unit_fields if f in given]
        if one_unit and in_iters and in_units:
            def flags(paths: list[str]) -> str:
                return " ".join("--" + p.split(".")[1].replace("_", "-") for p in paths)
            raise ConfigError(f"{source}: the {what} is given both in iterations ({flags(in_iters)}) and in "
                              f"samples/tokens ({flags(in_units)}): give it in one unit")
        if in_iters or in_units:
            for path in iteration_fields + unit_fields:
                if path not in given:
                    section, key = path.split(".")
                    default = {f.name: f.default for f in dataclasses.fields(SECTIONS[section])}[key]
                    setattr(getattr(job, section), key, default)
    job.update(values)


# Not taken from a checkpoint's config by `--load` alone (Megatron copies them only with
# --use-mp-args-from-checkpoint-args): a resume at another layout goes through resharding or a layout-free import.
_LAUNCH_LAYOUT = ("tensor_parallel", "pipeline_parallel", "sequence_parallel")


def _load_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            loaded = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path}: not valid YAML ({exc})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"--config {path}: expected a mapping of sections (model:, training:, ...)")
    return loaded


def _apply_preset(job: JobConfig, name: str) -> None:
    values = get_preset(name)
    values.pop("source", None)
    _apply_layer(job, values, f"preset {name}")
    job.preset = name


# Megatron-LM's argument defaults (megatron/training/arguments.py) for every setting where ours differ. Applied
# under the command line when neither --preset nor --config is given, so a copied launch script trains the model
# it trained in Megatron. Embedding dropout follows --hidden-dropout there (one flag), hence 0.1 as well.
MEGATRON_DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {"position_embedding": "learned", "attention_dropout": 0.1, "hidden_dropout": 0.1,
              "embedding_dropout": 0.1, "activation": "gelu", "block": "sequential", "norm": "layernorm",
              "bias": True, "tie_embeddings": True, "rotary_percent": 1.0},
    "optim": {"adam_beta1": 0.9, "adam_beta2": 0.999, "adam_eps": 1e-8, "weight_decay": 0.01,
              "lr_decay_style": "linear", "min_lr": 0.0, "clip_grad": 1.0},
    "training": {"eval_iters": 100, "log_interval": 100, "seed": 1234},
}


def parse_args(argv: list[str]) -> CliArgs:
    """Parse a command line into a validated JobConfig (vocab size may still come from the tokenizer; lengths in
    samples/tokens become iterations in JobConfig.resolve_units)."""
    preset: str | None = None
    config_files: list[str] = []
    load_dir: str | None = None
    overrides: list[tuple[Setter, Any]] = []
    out = CliArgs(job=JobConfig())
    state = _LineState()
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--"):
            raise ConfigError(f"unexpected argument '{token}' (flags start with --)")
        name, inline = _split_flag(token)
        arity = _arity(name)
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
            state.query_groups = value
        elif "." in name:
            load_dir = value if name == "training.load" else load_dir
            overrides.append((_set(name), value))
        elif name in ERROR_FLAGS:
            raise ConfigError(f"--{name}: {ERROR_FLAGS[name][1]}")
        elif name in OFF_FLAGS:
            _, off, why = OFF_FLAGS[name]
            if str(value) not in off:
                raise ConfigError(f"--{name} {value}: {why}; only --{name} {off[0]} (off) is accepted")
            out.notes.append(f"--{name} {value}: accepted (the off value)")
        elif name in _STATEFUL_FLAGS:
            _stateful_flag(name, value, state, overrides, out.notes)
        elif name in MEGATRON_FLAGS:
            load_dir = value if name == "load" else load_dir
            state.precisions.update({name} & {"fp16", "bf16"})
            state.rope = state.rope or name == "use-rotary-position-embeddings" or (
                name == "position-embedding-type" and value == "rope")
            state.sequence_parallel = state.sequence_parallel or name == "sequence-parallel"
            if name in _DATA_PATH_FLAGS:
                state.data_flags.add(name)
            overrides.append((MEGATRON_FLAGS[name][1], value))
        else:
            state.gqa = state.gqa or name == "group-query-attention"
            out.notes.append(f"--{name}: accepted, no effect ({NOOP_FLAGS[name][1]})")
    _finish_line(state, overrides, out.notes)

    job = out.job
    saved = checkpoint_config_path(load_dir) if load_dir and preset is None and not config_files else None
    if preset is not None:
        _apply_preset(job, preset)
    elif saved is not None:
        # Megatron's --use-checkpoint-args, always on: `--load DIR` alone resumes the run as it was configured.
        config_files.append(saved)
        out.notes.append(f"--load without --preset/--config: settings not on the command line come from the "
                         f"checkpoint's {saved}")
    elif not config_files:
        # A bare command line is a Megatron launch script: settings it leaves out mean what they mean there.
        _apply_layer(job, MEGATRON_DEFAULTS, "Megatron's defaults")
        out.notes.append("no --preset or --config: settings not on the command line take Megatron-LM's defaults "
                         "(learned positions, dropout 0.1, Adam beta2 0.999, weight decay 0.01, linear decay)")
    for path in config_files:
        loaded = _load_yaml(path)
        if path is saved:  # as Megatron's --use-checkpoint-args: the model-parallel layout is the launch's
            loaded["parallel"] = {k: v for k, v in (loaded.get("parallel") or {}).items() if k not in _LAUNCH_LAYOUT}
        if loaded.get("preset") is not None:
            _apply_preset(job, str(loaded["preset"]))
        _apply_layer(job, loaded, f"--config {path}")
    line: dict[str, dict[str, Any]] = {}
    for setter, value in overrides:  # later flags overwrite earlier ones: the order given decides
        setter(line, value)
    _apply_layer(job, line, "the command line", one_unit=True)
    # before anything is built (the JSON may set ZeRO, clipping, precision); given = the line's and files' fields
    merge_deepspeed_json(job, set().union(_unit_fields(line), *map(_unit_fields, map(_load_yaml, config_files))),
                         out.notes)
    d = job.data
    if d.tokenizer_type is None and d.vocab_file and d.merge_file:
        # Megatron's pretrain_gpt.py defaults the tokenizer to GPT2BPETokenizer, so GPT launch scripts omit it.
        d.tokenizer_type = "GPT2BPETokenizer"
        out.notes.append("--tokenizer-type not given: GPT2BPETokenizer (from --vocab-file/--merge-file), as "
                         "Megatron's pretrain_gpt.py does")
    if state.sequence_parallel and job.parallel.tensor_parallel == 1:
        job.parallel.sequence_parallel = False
        out.notes.append("--sequence-parallel: no effect with tensor parallel size 1 (as in Megatron)")
    job.validate()
    return out


def _finish_line(state: _LineState, overrides: list[tuple[Setter, Any]], notes: list[str]) -> None:
    if len(state.precisions) > 1:  # Megatron refuses the pair too; taking the last one given would be a guess
        raise ConfigError("--fp16 and --bf16 are both given: choose one precision")
    if state.query_groups is not None:
        if state.gqa:
            overrides.append((_set("model.num_kv_heads"), state.query_groups))
        else:
            notes.append("--num-query-groups ignored without --group-query-attention (as in Megatron)")
    if state.chunk is not None and not state.checkpointing:
        notes.append("--checkpoint-num-layers/--recompute-num-layers: no effect without --checkpoint-activations "
                     "or --recompute-granularity full (as in Megatron)")
    if state.no_pipeline:  # wins over --pipeline-model-parallel-size wherever it stands (Megatron-DeepSpeed)
        overrides.append((_const("parallel.pipeline_parallel", 1), None))
    _data_args_files(state, overrides, notes)


def _data_args_files(state: _LineState, overrides: list[tuple[Setter, Any]], notes: list[str]) -> None:
    """Read --data-args-path / --per-split-data-args-path here, so the job config (saved with every checkpoint)
    records the blend itself."""
    check_data_args_exclusive(state.data_args_path, state.split_args_path, state.data_flags)
    if state.data_args_path:
        items = read_data_args_file(state.data_args_path)
        overrides.append((_set("data.data_path"), items))
        notes.append(f"--data-args-path: {len(items)} --data-path items from {state.data_args_path}")
    if state.split_args_path:
        for split, items in read_per_split_data_args_file(state.split_args_path).items():
            overrides.append((_set(f"data.{split}_data_path"), items))
        notes.append(f"--per-split-data-args-path: per-split blends from {state.split_args_path}")
