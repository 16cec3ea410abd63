"""Tensor-parallel plans: data, not code. A plan is a table `{module-path pattern: style}` over the model's
stable module names; `apply_tensor_parallel` (tensor_parallel.py) executes it.

Patterns are dotted module paths where `*` matches exactly one path component (`layers.*.attn.q_proj`). Every
pattern must match at least one module, no module may match two patterns, and (checked when applying) every
nn.Linear / nn.Embedding / norm of the model must be covered, so a new projection can never silently stay
unsharded. A style is a name, or a dict {"style": name, **options}.

Styles (activations are (B, T, H); "SP" = sequence parallelism, residual stream sharded along T):
  vocab_embedding   nn.Embedding -> VocabParallelEmbedding (rows split; partial lookups all-reduced)
  column            nn.Linear -> ColumnParallelLinear (output features split; input already in the TP region)
  replicated_kv     nn.Linear -> ReplicatedKVLinear (full K/V weight on every rank, this rank's KV head used,
                    gradients all-reduced over TP); options kv_heads, head_dim
  row               nn.Linear -> RowParallelLinear with its own reduction (all-reduce; reduce-scatter under SP)
  row_partial       nn.Linear -> RowParallelLinear without reduction (parallel block: reduced once by "reduce")
  reduce            the parallel block's identity -> TPReduce (all-reduce; reduce-scatter under SP)
  vocab_head        untied lm_head -> ColumnParallelLinear over the vocabulary (logits stay vocab-sharded)
  norm              a norm whose output enters a TP region: output -> copy_to_tp (SP: all-gather along T);
                    under SP its parameter gradients are all-reduced over TP (each rank saw other tokens)
  sequence_scatter  module whose output enters the residual stream (embedding): SP splits it along T
  tp_rng            module run under the per-TP-rank RNG stream (attention: dropout, DropHead on this rank's heads);
                    plan_for emits it only when attention_dropout > 0 or drophead > 0
  sequence_rng      like tp_rng but only under SP (residual dropout on sequence shards); only if hidden_dropout > 0
  replicated        explicitly left whole and identical on all TP ranks (e.g. learned position embedding)
  head_table        nn.Embedding with one column per head (T5 relative bias) -> HeadParallelEmbedding (columns split
                    like the heads; local lookups)
"""

from __future__ import annotations

import re
from typing import Any, Union

from torch import nn

from ..errors import UserError
from ..config.model import ModelConfig

StyleSpec = Union[str, dict[str, Any]]
Plan = dict[str, StyleSpec]

STYLES = ("vocab_embedding", "column", "replicated_kv", "row", "row_partial", "reduce", "vocab_head", "norm",
          "sequence_scatter", "tp_rng", "sequence_rng", "replicated", "head_table")


class PlanError(UserError, ValueError):
    """A plan does not fit the model (unknown style, pattern matching nothing, module left uncovered...)."""


def style_of(spec: StyleSpec) -> tuple[str, dict[str, Any]]:
    if isinstance(spec, str):
        name, opts = spec, {}
    elif isinstance(spec, dict) and "style" in spec:
        name, opts = spec["style"], {k: v for k, v in spec.items() if k != "style"}
    else:
        raise PlanError(f"a plan style must be a name or a dict with a 'style' key, got {spec!r}")
    if name not in STYLES:
        raise PlanError(f"unknown tensor-parallel style '{name}': use one of {', '.join(STYLES)}")
    return name, opts


def _pattern_regex(pattern: str) -> re.Pattern:
    parts = [r"[^.]+" if p == "*" else re.escape(p) for p in pattern.split(".")]
    return re.compile(r"\.".join(parts) + r"\Z")


def match_plan(model: nn.Module, plan: Plan) -> dict[str, tuple[str, dict[str, Any]]]:
    """{module path: (style, options)} for every module the plan names. Raises PlanError when a pattern matches
    nothing or a module matches two patterns."""
    names = [n for n, _ in model.named_modules() if n]
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    owner: dict[str, str] = {}
    for pattern, spec in plan.items():
        style = style_of(spec)
        rx = _pattern_regex(pattern)
        hits = [n for n in names if rx.match(n)]
        if not hits:
            raise PlanError(f"tensor-parallel plan pattern '{pattern}' matches no module of the model: the plan "
                            f"and the model disagree (fix the plan, e.g. a module name changed)")
        for n in hits:
            if n in owner:
                raise PlanError(f"module '{n}' is matched by two plan patterns: '{owner[n]}' and '{pattern}'")
            owner[n] = pattern
            out[n] = style
    return out


def plan_for(cfg: ModelConfig, tp: int) -> Plan:
    """The plan for a GPT built from `cfg` at tensor-parallel size `tp` (sequence parallelism is a flag of
    `apply_tensor_parallel`, not a different plan).

    Covers MHA, GQA with kv heads divisible by TP (KV column-sharded), GQA/MQA with fewer kv heads than TP (KV
    replicated, gradients all-reduced: BigCode's StarCoder layout), GELU and SwiGLU MLPs, tied and untied heads,
    learned or rotary positions, and sequential or parallel blocks (one reduction per parallel block)."""
    nh, nkv = cfg.num_attention_heads, cfg.num_kv_heads
    if nh % tp != 0:
        raise PlanError(f"num_attention_heads ({nh}) is not divisible by the tensor parallel size ({tp}): "
                        f"choose a TP size that divides the head count")
    if cfg.ffn_hidden_size % tp != 0:
        raise PlanError(f"ffn_hidden_size ({cfg.ffn_hidden_size}) is not divisible by the tensor parallel size ({tp})")
    if nkv % tp == 0:
        kv: StyleSpec = "column"
    elif tp % nkv == 0:
        kv = {"style": "replicated_kv", "kv_heads": nkv, "head_dim": cfg.head_dim}
    else:
        raise PlanError(f"num_kv_heads ({nkv}) and tensor parallel size ({tp}): one must divide the other "
                        f"(kv heads sharded when divisible by TP, replicated when TP is a multiple of them)")
    parallel = cfg.block == "parallel"
    out_proj = "row_partial" if parallel else "row"
    plan: Plan = {
        "embed": "sequence_scatter",
        "embed.word": "vocab_embedding",
        "layers.*.norm1": "norm",
        "layers.*.attn.q_proj": "column",
        "layers.*.attn.k_proj": kv,
        "layers.*.attn.v_proj": kv,
        "layers.*.attn.o_proj": out_proj,
        "final_norm": "norm",
    }
    # RNG forks cost two generator-state swaps per module call: only where a dropout actually draws. DropHead draws
    # per local head, so it also needs this rank's own stream (the shared one would drop head h on every rank's
    # shard at once); LayerDrop draws in the block, from the shared stream, so all TP ranks drop the same layers.
    if cfg.attention_dropout > 0 or cfg.drophead > 0:
        plan["layers.*.attn"] = "tp_rng"
    if cfg.hidden_dropout > 0:
        plan["layers.*.dropout"] = "sequence_rng"
    if cfg.position_embedding == "learned":
        plan["embed.position"] = "replicated"
    if cfg.position_embedding == "t5":  # the relative bias table: one column per head, split like the heads
        plan["layers.*.attn.rel_bias"] = "head_table"
    if not (parallel and cfg.parallel_shared_norm):
        plan["layers.*.norm2"] = "norm"
    if cfg.activation == "swiglu":
        plan.update({"layers.*.mlp.gate_proj": "column", "layers.*.mlp.up_proj": "column",
                     "layers.*.mlp.down_proj": out_proj})
    else:
        plan.update({"layers.*.mlp.fc_in": "column", "layers.*.mlp.fc_out": out_proj})
    if parallel:
        plan["layers.*.parallel_reduce"] = "reduce"
    if not cfg.tie_embeddings:
        plan["lm_head"] = "vocab_head"
    return plan
