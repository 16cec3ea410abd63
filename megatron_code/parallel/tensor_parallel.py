"""Apply a tensor-parallel plan (plans.py) to an already-built single-device model, in place.

Each rank takes ITS slice of the full weights it was given (so a model initialized identically on every rank and
then sharded equals the single-process model exactly: parity tests compare against the unsharded model), or, for
a model built on the `meta` device, creates sharded meta parameters (shapes only; then
`sharded_init.materialize_gpt_params` or, after `to_empty`, the model's `init_weights()` give each rank its slice
of the single-process weights: init draws every weight at its full shape and keeps the part the layer's
`shard_param` names, see layers.py and sharded_init.py). The trainer builds TP/PP models this way, so no rank
ever holds the whole model.

Module names and parameter names are unchanged (`layers.0.attn.q_proj.weight` is now this rank's shard), so
DeepSpeed checkpoints name the same keys in every layout; `param.partition_dim` says how to reassemble them.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from . import mappings as M
from .groups import ParallelGroups
from .layers import (ColumnParallelLinear, GroupRef, HeadParallelEmbedding, ReplicatedKVLinear, RowParallelLinear,
                     TPReduce, VocabParallelEmbedding, _GroupAttr, region_entry)
from .plans import Plan, PlanError, match_plan
from .random import RNGTracker, tp_rng_tracker

_LINEAR_STYLES = ("column", "replicated_kv", "row", "row_partial", "vocab_head")


# ----------------------------------------------------------------------------- class swaps (keep module names)
class _ReduceParamGrads:
    """Mixin: parameters enter the forward through `reduce_grad` (identity forward, gradient all-reduced over TP
    in backward). Used for norms under sequence parallelism, whose per-rank gradients cover only this rank's
    tokens. Part of the autograd graph, so it runs in the same order on every rank."""

    _tp_grad_group: Any = None  # a GroupRef (deepcopy-safe)

    def forward(self, *args, **kwargs):
        saved = dict(self._parameters)
        group = self._tp_grad_group.group
        try:
            for name, p in saved.items():
                if p is not None:
                    # a non-leaf view of p: module code reading self.weight gets it, the optimizer still sees p
                    self._parameters[name] = M.reduce_grad(p, group)
            return super().forward(*args, **kwargs)
        finally:
            self._parameters.update(saved)


class _ForkTPRNG:
    """Mixin: run the module under the tracker's per-TP-rank stream (dropout masks differ across TP ranks)."""

    _tp_rng_tracker: Optional[RNGTracker] = None

    def forward(self, *args, **kwargs):
        with self._tp_rng_tracker.fork():
            return super().forward(*args, **kwargs)


_SWAPPED: dict[tuple[type, type], type] = {}


def _swap_class(module: nn.Module, mixin: type, **attrs: Any) -> None:
    cls = type(module)
    if not issubclass(cls, mixin):
        key = (mixin, cls)
        if key not in _SWAPPED:
            _SWAPPED[key] = type(f"{mixin.__name__.strip('_')}{cls.__name__}", (mixin, cls), {})
        module.__class__ = _SWAPPED[key]
    for k, v in attrs.items():
        setattr(module, k, v)


# ----------------------------------------------------------------------------- forward hooks (outputs only)
def _region_entry_hook(group, sequence_parallel: bool):
    def hook(module, args, output):
        return region_entry(output, group, sequence_parallel)
    return hook


def _sequence_scatter_hook(group):
    def hook(module, args, output):
        return M.scatter_to_sequence(output, group)
    return hook


# ----------------------------------------------------------------------------- the entry point
def apply_tensor_parallel(model: nn.Module, plan: Plan, groups: ParallelGroups, sequence_parallel: bool = False,
                          rng_tracker: Optional[RNGTracker] = None) -> nn.Module:
    """Shard `model` in place for this rank's TP position and return it.

    Contract: every TP rank calls this on a model holding the same full weights (or on meta models); afterwards
    the forward returns VOCAB-SHARDED logits (B, T, V/tp) -> use `training.losses.causal_lm_loss` with
    `groups.tp_group`. With `sequence_parallel`, T must be divisible by TP; inputs are full (B, T) on every TP
    rank. `rng_tracker` (random.tp_rng_tracker or seed_parallel_rng) drives dropout inside TP regions; when None
    one is seeded from torch.initial_seed() (random.tp_rng_tracker) and only the model's layers hold it: pass your
    own to checkpoint it (random.get_rng_state, exact resume with dropout > 0) and to hand it to activation
    checkpointing and the pipeline. With TP = 1 the plan is validated and the model returned unchanged.
    """
    tp = groups.tp_size
    if any(isinstance(m, _GroupAttr) for m in model.modules()):
        raise PlanError("this model is already tensor-parallel: apply the plan once, to the unsharded model")
    if sequence_parallel and tp == 1:
        raise PlanError("sequence parallelism needs tensor parallel size > 1 (--sequence-parallel shards the "
                        "sequence over the TP group)")
    matches = match_plan(model, plan)
    _check_coverage(model, matches)
    if tp == 1:
        return model
    group = groups.tp_group
    if rng_tracker is None:
        rng_tracker = tp_rng_tracker(groups.tp_rank)
    # Replace children before wrapping parents (deepest paths first) so a swapped parent keeps new children.
    for path in sorted(matches, key=lambda p: -p.count(".")):
        style, opts = matches[path]
        module = model.get_submodule(path)
        new = _convert(path, module, style, opts, group, sequence_parallel, rng_tracker)
        if new is not module:
            parent_path, _, leaf = path.rpartition(".")
            setattr(model.get_submodule(parent_path) if parent_path else model, leaf, new)
    return model


def _convert(path: str, module: nn.Module, style: str, opts: dict, group, sp: bool,
             tracker: RNGTracker) -> nn.Module:
    if style in _LINEAR_STYLES and not isinstance(module, nn.Linear):
        raise PlanError(f"style '{style}' needs an nn.Linear but '{path}' is {type(module).__name__}")
    if style == "column":
        return ColumnParallelLinear.from_dense(module, group, copy_input=False, sequence_parallel=sp)
    if style == "vocab_head":
        return ColumnParallelLinear.from_dense(module, group, copy_input=False, sequence_parallel=sp)
    if style == "replicated_kv":
        return ReplicatedKVLinear.from_dense(module, group, copy_input=False, sequence_parallel=sp, **opts)
    if style == "row":
        return RowParallelLinear.from_dense(module, group, reduce="reduce_scatter" if sp else "all_reduce")
    if style == "row_partial":
        return RowParallelLinear.from_dense(module, group, reduce="none")
    if style == "vocab_embedding":
        if not isinstance(module, nn.Embedding):
            raise PlanError(f"style 'vocab_embedding' needs an nn.Embedding but '{path}' is {type(module).__name__}")
        return VocabParallelEmbedding.from_dense(module, group)
    if style == "head_table":
        if not isinstance(module, nn.Embedding):
            raise PlanError(f"style 'head_table' needs an nn.Embedding but '{path}' is {type(module).__name__}")
        return HeadParallelEmbedding.from_dense(module, group)
    if style == "reduce":
        if not isinstance(module, nn.Identity):
            raise PlanError(f"style 'reduce' replaces an nn.Identity placeholder; '{path}' is "
                            f"{type(module).__name__}")
        return TPReduce(group, sequence_parallel=sp)
    if style == "norm":
        if sp:
            _swap_class(module, _ReduceParamGrads, _tp_grad_group=GroupRef(group))
        module.register_forward_hook(_region_entry_hook(group, sp))
        return module
    if style == "sequence_scatter":
        if sp:
            module.register_forward_hook(_sequence_scatter_hook(group))
        return module
    if style == "tp_rng" or (style == "sequence_rng" and sp):
        _swap_class(module, _ForkTPRNG, _tp_rng_tracker=tracker)
        return module
    return module  # "replicated", or "sequence_rng" without SP


def _check_coverage(model: nn.Module, matches: dict) -> None:
    """Every Linear / Embedding / norm must be named by the plan (sharded, or explicitly 'replicated')."""
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        needs = isinstance(module, (nn.Linear, nn.Embedding)) or ("norm" in leaf and hasattr(module, "weight"))
        if needs and name not in matches:
            raise PlanError(f"module '{name}' ({type(module).__name__}) is not covered by the tensor-parallel plan: "
                            f"add a style for it (or 'replicated' if it must stay whole on every rank)")


def tensor_parallel_state(model: nn.Module) -> dict:
    """Which parameters are sharded and along which dim: {param name: partition_dim} (resharding / checkpoints)."""
    return {n: p.partition_dim for n, p in model.named_parameters() if getattr(p, "tensor_model_parallel", False)}


# ----------------------------------------------------------------------------- resharding (no processes needed)
def partition_spec(cfg, tp: int) -> dict[str, Optional[int]]:
    """{parameter name: dim it is split along at tensor-parallel size `tp`, or None if every TP rank holds it
    whole}, computed from a meta-device GPT sharded for a virtual rank (no memory, no processes). Optimizer
    state tensors shaped like their parameter (Adam moments) follow the same spec."""
    from ..model import GPT
    from .plans import plan_for

    with torch.device("meta"):
        model = GPT(cfg)
    if tp > 1:
        apply_tensor_parallel(model, plan_for(cfg, tp), ParallelGroups.virtual(tp=tp))
    split = tensor_parallel_state(model)
    return {n: split.get(n) for n, _ in model.named_parameters()}


def merge_tp_shards(shards: list[dict], spec: dict[str, Optional[int]]) -> dict:
    """Full (TP = 1) state dict from the per-TP-rank state dicts [rank 0, rank 1, ...] of one pipeline stage /
    data replica. Split tensors are concatenated along their dim; replicated ones are taken from rank 0."""
    out = {}
    for key, value in shards[0].items():
        dim = spec.get(key)
        out[key] = value if dim is None or len(shards) == 1 else torch.cat([s[key] for s in shards], dim=dim)
    return out


def split_for_tp(full: dict, spec: dict[str, Optional[int]], tp: int, rank: int) -> dict:
    """TP rank `rank`'s state dict at size `tp` from a full state dict (the inverse of merge_tp_shards)."""
    out = {}
    for key, value in full.items():
        dim = spec.get(key)
        if dim is None or tp == 1:
            out[key] = value
        else:
            if value.shape[dim] % tp != 0:
                raise PlanError(f"'{key}' has {value.shape[dim]} rows along dim {dim}, not divisible by TP {tp}")
            out[key] = value.chunk(tp, dim=dim)[rank].clone()
    return out
