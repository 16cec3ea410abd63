"""Which `transformers` class expresses one of our architectures exactly (the table of targets is in keymaps.py's
docstring and docs/export.md). A standard class always wins over our own modeling code (REMOTE)."""

from __future__ import annotations

import dataclasses

import torch

from ..config.base import ConfigError
from ..config.model import ModelConfig


class UnsupportedArchitecture(ConfigError):
    """The model cannot be expressed exactly by any supported `transformers` architecture (or vice versa)."""


REMOTE = "MegatronCodeForCausalLM"
TARGETS = ("GPTNeoXForCausalLM", "PhiForCausalLM", "LlamaForCausalLM", "CohereForCausalLM", "Starcoder2ForCausalLM",
           "GPT2LMHeadModel", REMOTE)
STANDARD_TARGETS = TARGETS[:-1]
MODEL_TYPES = {"gpt_neox": "GPTNeoXForCausalLM", "phi": "PhiForCausalLM", "llama": "LlamaForCausalLM",
               "cohere": "CohereForCausalLM", "starcoder2": "Starcoder2ForCausalLM", "gpt2": "GPT2LMHeadModel",
               "megatron_code": REMOTE}


# ----------------------------------------------------------------------------------------------- target choice
def _describe(cfg: ModelConfig) -> str:
    return (f"block={cfg.block}{' (shared norm)' if cfg.block == 'parallel' and cfg.parallel_shared_norm else ''}, "
            f"norm={cfg.norm}{'' if cfg.norm_bias else ' (no bias)'}, activation={cfg.activation}, "
            f"heads={cfg.num_attention_heads}/kv={cfg.num_kv_heads}, head_dim={cfg.head_dim}, "
            f"rotary dims={cfg.rotary_dims}, position={cfg.position_embedding}, bias={cfg.bias}, "
            f"output_bias={cfg.output_bias}")


# ModelConfig fields our exported modeling code implements, with the values it understands (None: any value).
# A field added to ModelConfig later and set away from its default is refused until the modeling code learns it.
REMOTE_FIELDS: dict[str, tuple | None] = {
    "num_layers": None, "hidden_size": None, "num_attention_heads": None, "num_kv_heads": None, "head_dim": None,
    "ffn_hidden_size": None, "vocab_size": None, "vocab_pad_multiple": None, "max_position_embeddings": None,
    "position_embedding": ("learned", "rope", "none", "t5"), "t5_buckets": None, "t5_max_distance": None,
    "rotary_percent": None, "rotary_dims": None,
    "rotary_base": None, "norm": ("layernorm", "rmsnorm"), "norm_eps": None, "norm_bias": None,
    "activation": ("gelu", "gelu_tanh", "swiglu", "relu", "elu"), "block": ("sequential", "parallel"),
    "parallel_shared_norm": None, "bias": None, "tie_embeddings": None, "output_bias": None,
    # training-only fields: no effect on the function at inference
    "attention_dropout": None, "hidden_dropout": None, "embedding_dropout": None, "init_std": None,
    "scaled_init": None, "embedding_init_std": None, "layerdrop": None, "drophead": None,
    "output_logit_scaling": None,  # a function of the model: Cohere's logit_scale or our code (target_problems)
}


def _unknown_fields(cfg: ModelConfig) -> list[str]:
    """Fields of `cfg` that the exporters do not know and that are set away from their default."""
    p = []
    for f in dataclasses.fields(ModelConfig):
        value = getattr(cfg, f.name)
        if f.name in REMOTE_FIELDS:
            allowed = REMOTE_FIELDS[f.name]
            if allowed is not None and value not in allowed:
                p.append(f"model.{f.name}={value!r} (the exporters implement {', '.join(map(str, allowed))})")
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        if value != default:
            p.append(f"model.{f.name}={value!r} (no exporter implements this field yet)")
    return p


def target_problems(cfg: ModelConfig, target: str) -> list[str]:
    """Reasons why `target` cannot express `cfg` exactly (empty list: it can)."""
    p: list[str] = _unknown_fields(cfg)
    natural_head = cfg.hidden_size // cfg.num_attention_heads
    natural = cfg.head_dim * cfg.num_attention_heads == cfg.hidden_size
    # one activation between fc_in and fc_out; transformers' ACT2FN has gelu, tanh-gelu and relu (no ELU)
    gelu = cfg.activation in ("gelu", "gelu_tanh", "relu")
    if target not in TARGETS:
        raise UnsupportedArchitecture(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if target == REMOTE:
        return p
    if cfg.output_logit_scaling and target != "CohereForCausalLM":
        p.append("output_logit_scaling (logits times 1/sqrt(hidden_size)): of the standard classes only Cohere's "
                 "logit_scale expresses it")
    if target == "GPT2LMHeadModel":
        if cfg.position_embedding != "learned":
            p.append("GPT-2 needs learned positions")
    elif cfg.position_embedding != "rope":
        p.append(f"position_embedding={cfg.position_embedding!r} ({target} uses rotary embeddings)")
    if target == "GPTNeoXForCausalLM":
        if cfg.norm != "layernorm" or not gelu:
            p.append("GPT-NeoX needs LayerNorm + GELU")
        if cfg.block == "parallel" and cfg.parallel_shared_norm:
            p.append("GPT-NeoX's parallel block has two norms (a shared norm is the phi-1 layout)")
        if cfg.num_kv_heads != cfg.num_attention_heads:
            p.append("GPT-NeoX has no grouped/multi-query attention")
        if not natural:
            p.append("GPT-NeoX needs head_dim x heads == hidden_size")
        if cfg.output_bias:
            p.append("GPT-NeoX's output head has no bias")
    elif target == "PhiForCausalLM":
        if cfg.norm != "layernorm" or not gelu:
            p.append("Phi needs LayerNorm + GELU")
        if not (cfg.block == "parallel" and cfg.parallel_shared_norm):
            p.append("Phi needs a parallel block with one shared norm")
        if cfg.head_dim != natural_head or cfg.hidden_size % cfg.num_attention_heads:
            p.append("Phi needs head_dim == hidden_size / heads")
    elif target == "LlamaForCausalLM":
        if cfg.norm != "rmsnorm" or cfg.activation != "swiglu" or cfg.block != "sequential":
            p.append("Llama needs RMSNorm + SwiGLU + sequential block")
        if cfg.rotary_dims != cfg.head_dim:
            p.append("Llama rotates the whole head (no partial rotary)")
        if cfg.output_bias:
            p.append("Llama's output head has no bias")
    elif target == "CohereForCausalLM":
        if cfg.norm != "layernorm" or cfg.norm_bias:
            p.append("Cohere needs a bias-free LayerNorm")
        if cfg.activation != "swiglu" or not (cfg.block == "parallel" and cfg.parallel_shared_norm):
            p.append("Cohere needs SwiGLU + a parallel block with one shared norm")
        if cfg.bias:
            p.append("Cohere's MLP has no biases (set bias false)")
        if cfg.rotary_dims != cfg.head_dim:
            p.append("Cohere rotates the whole head (no partial rotary)")
        if cfg.output_bias:
            p.append("Cohere's output head has no bias")
    elif target == "Starcoder2ForCausalLM":
        if cfg.norm != "layernorm" or not gelu or cfg.block != "sequential":
            p.append("Starcoder2 needs LayerNorm + GELU + sequential block")
        if cfg.rotary_dims != cfg.head_dim:
            p.append("Starcoder2 rotates the whole head (no partial rotary)")
        if cfg.output_bias:
            p.append("Starcoder2's output head has no bias")
    elif target == "GPT2LMHeadModel":
        if cfg.norm != "layernorm" or not gelu or cfg.block != "sequential":
            p.append("GPT-2 needs LayerNorm + GELU + sequential block")
        if cfg.num_kv_heads != cfg.num_attention_heads:
            p.append("GPT-2 has no grouped/multi-query attention")
        if not natural:
            p.append("GPT-2 needs head_dim x heads == hidden_size")
        if cfg.output_bias:
            p.append("GPT-2's output head has no bias")
    return p


def choose_target(cfg: ModelConfig, target: str | None = None, standard_only: bool = False) -> str:
    """The architecture that expresses `cfg` exactly: the first standard transformers class that does, else our own
    modeling code (REMOTE). `target` forces one; `standard_only` refuses instead of falling back to REMOTE."""
    candidates = [target] if target else list(STANDARD_TARGETS if standard_only else TARGETS)
    reasons = {}
    for t in candidates:
        problems = target_problems(cfg, t)
        if not problems:
            return t
        reasons[t] = problems
    detail = "; ".join(f"{t}: {', '.join(r)}" for t, r in reasons.items())
    raise UnsupportedArchitecture(f"no transformers architecture expresses this model exactly ({_describe(cfg)}). "
                                  f"{detail}. Export is refused rather than approximated")


def rotary_factor(cfg: ModelConfig) -> float:
    """partial_rotary_factor f with int(head_dim * f) == rotary dims (transformers truncates; r/D may round down)."""
    d, r = cfg.head_dim, cfg.rotary_dims
    f = r / d
    while int(d * f) < r:  # e.g. r=10, d=30: 30 * (1/3) = 9.999...
        f = float(torch.nextafter(torch.tensor(f, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64)))
    return f
