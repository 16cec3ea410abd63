"""A user's DeepSpeed JSON (--deepspeed_config / --deepspeed-config) merged into the job while the config is
resolved, before anything is built: the model build, the choice of who clips gradients and the ZeRO partitioning
all depend on keys the JSON may set. parallel/engine.py later hands the JSON to DeepSpeed with our keys checked.

A value set in the JSON replaces a preset's or a default; against a value given on the command line or in a
--config file it must agree (a disagreement is an error naming both), except the fp16 loss-scaling keys: there the
JSON wins with a note, as in Megatron-DeepSpeed, whose engine takes them from the JSON while its launch scripts pass
other values as Megatron flags (its ds_config_gpt template: loss_scale_window 500 beside --loss-scale-window 1000).
Keys for DeepSpeed features this trainer does not use are refused in one line rather than silently ignored."""

from __future__ import annotations

import json
import os
from typing import Any

from .base import ConfigError

# Top-level keys refused, with why (DeepSpeed would accept them, and the run would not do what they say).
REFUSED_KEYS = {
    "curriculum_learning": "DeepSpeed's legacy curriculum learning (sequence-length warmup) drives a DeepSpeed data "
                           "pipeline this trainer does not use",
    "data_efficiency": "DeepSpeed's data-efficiency library (curriculum, data routing) drives a DeepSpeed data "
                       "pipeline this trainer does not use",
    "amp": "NVIDIA apex AMP is not used: train in mixed precision with --bf16 or --fp16",
    "progressive_layer_drop": "progressive layer drop needs DeepSpeed's layer-drop model hooks, which our model lacks",
    "sparse_attention": "DeepSpeed's sparse attention kernels are not used by our model",
    "optimizer": "megatron_code builds AdamW from --lr/--weight-decay/--adam-* etc.",
    "scheduler": "the LR schedule comes from --lr-decay-style/--lr-warmup-* etc.",
}

# (JSON path, job field, flag) merged one to one; fp16 loss scaling keys map to DeepSpeed's fp16 section.
SCALARS = (
    (("gradient_clipping",), "optim.clip_grad", "--clip-grad"),
    (("zero_optimization", "stage"), "parallel.zero_stage", "--zero-stage"),
    (("train_micro_batch_size_per_gpu",), "training.micro_batch_size", "--micro-batch-size"),
    (("train_batch_size",), "training.global_batch_size", "--global-batch-size"),
    (("fp16", "loss_scale"), "training.loss_scale", "--loss-scale"),
    (("fp16", "initial_scale_power"), "training.initial_loss_scale_power", "--initial-loss-scale"),
    (("fp16", "loss_scale_window"), "training.loss_scale_window", "--loss-scale-window"),
    (("fp16", "hysteresis"), "training.hysteresis", "--hysteresis"),
    (("fp16", "min_loss_scale"), "training.min_loss_scale", "--min-loss-scale"),
)


def read_deepspeed_json(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            given = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"--deepspeed_config {path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--deepspeed_config {path}: not valid JSON ({exc})") from None
    if not isinstance(given, dict):
        raise ConfigError(f"--deepspeed_config {path}: expected a JSON object of DeepSpeed settings")
    return given


def json_precision(given: dict[str, Any]) -> str | None:
    """fp16 / bf16 when the JSON enables one ("bfloat16" is DeepSpeed's other spelling), None when it enables
    neither (fp32, or: not said)."""
    enabled = [name for key, name in (("fp16", "fp16"), ("bf16", "bf16"), ("bfloat16", "bf16"))
               if isinstance(given.get(key), dict) and given[key].get("enabled", False) is True]
    if len(set(enabled)) > 1:
        raise ConfigError("the DeepSpeed JSON enables both fp16 and bf16: enable one")
    return enabled[0] if enabled else None


def merge_deepspeed_json(job, given: set[str] | None, notes: list[str]) -> None:
    """Merge job.parallel.deepspeed_config into `job`. `given`: the "section.field" names set on the command line or
    in --config files (None: every field counts as given, so any difference is an error, and a missing file too).
    With `given` (command-line parsing) a file that does not exist on this machine is noted, not an error: a
    launch line may be resolved (--print-config) away from the cluster; the trainer reads it before building."""
    path = job.parallel.deepspeed_config
    if not path:
        return
    if given is not None and not os.path.exists(path):
        notes.append(f"--deepspeed_config {path} does not exist here: it is read (and must exist) when training "
                     f"starts")
        return
    ds = read_deepspeed_json(path)
    for key, why in REFUSED_KEYS.items():
        if key in ds:
            raise ConfigError(f"--deepspeed_config {path}: \"{key}\" is not supported ({why}): remove it")

    def take(field: str, value: Any, what: str, flag: str, json_wins: bool = False) -> None:
        section, name = field.split(".")
        cfg = getattr(job, section)
        current = getattr(cfg, name)
        if value == "auto" or value == current:
            return
        if (given is None or field in given) and not json_wins:
            raise ConfigError(f"--deepspeed_config {path} sets {what} = {value} but {flag} is {current}: make them "
                              f"agree (or give it in one place)")
        cfg.update({name: value}, prefix=f"{section}.")  # coerced and type-checked like any config value
        notes.append(f"{flag.lstrip('-')} = {value} from --deepspeed_config {path} ({what})")

    precision = json_precision(ds)
    if precision is not None:
        take("training.precision", precision, f"{precision}.enabled", f"--{precision} (precision)")
    elif any(isinstance(ds.get(k), dict) and ds[k].get("enabled") is False for k in ("fp16", "bf16", "bfloat16")):
        take("training.precision", "fp32", "fp16/bf16 disabled", "the precision")
    for keys, field, flag in SCALARS:
        node: Any = ds
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        if node is not None:
            if keys[0] == "fp16" and job.training.precision != "fp16":
                continue  # loss scaling only means something in fp16
            take(field, node, ".".join(keys), flag, json_wins=keys[0] == "fp16")
