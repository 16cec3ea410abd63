"""Model architecture config: every knob the presets need, validated with messages that name the fix."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from .base import ConfigBase, ConfigError, Derived

POSITION_TYPES = ("learned", "rope", "none", "t5")  # t5: relative position bias (model/attention.py)
NORM_TYPES = ("layernorm", "rmsnorm")
ACTIVATIONS = ("gelu", "gelu_tanh", "swiglu", "relu", "elu")
BLOCK_TYPES = ("sequential", "parallel")


@dataclass
class ModelConfig(ConfigBase):
    num_layers: int = 2
    hidden_size: int = 128
    num_attention_heads: int = 4
    # The four Derived fields below read as their resolved value (the code uses no other name for it) and save as
    # given (None: derived). Unset: same as num_attention_heads (MHA); 1 -> MQA; in between -> GQA.
    num_kv_heads: Optional[int] = Derived(lambda c, n: c.num_attention_heads if n is None else n)
    # Unset: hidden_size // num_attention_heads. PaLM 540B uses 48 heads x 256 on an 18,432 model. Megatron's
    # name is kv_channels (--kv-channels), though it sizes the queries too; HF's is head_dim, as ours.
    head_dim: Optional[int] = Derived(lambda c, d: c.hidden_size // c.num_attention_heads if d is None else d)
    # Unset: 4 x hidden (GELU) or the value given; SwiGLU presets give it explicitly.
    ffn_hidden_size: Optional[int] = Derived(lambda c, f: 4 * c.hidden_size if f is None else f)
    # True vocabulary size (None: taken from the tokenizer at training time).
    vocab_size: Optional[int] = None
    # Embedding/output rows are padded to a multiple of this (Megatron's make-vocab-size-divisible-by).
    vocab_pad_multiple: int = 128
    max_position_embeddings: int = 2048
    position_embedding: str = "rope"
    # Partial rotary, given as a fraction of head_dim (rotary_percent, Megatron's --rotary-percent) or as a count
    # (rotary_dims, phi-1's 32; wins when given). rotary_dims reads as the number of dims of each head that rotate:
    # 0 without RoPE.
    rotary_percent: float = 1.0
    rotary_dims: Optional[int] = Derived(lambda c, r: 0 if c.position_embedding != "rope" else
                                         int(c.head_dim * c.rotary_percent) if r is None else r)
    rotary_base: float = 10000.0
    # position_embedding "t5": T5's relative position bias (Raffel et al., 2020), a learned scalar per head and
    # bucket of the distance key - query: exact up to buckets / 2, log-spaced up to max_distance, causal
    # (unidirectional) buckets. One table per layer (T5 shares one across layers).
    t5_buckets: int = 32
    t5_max_distance: int = 128
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    norm_bias: bool = True
    # Megatron's --apply-layernorm-1p (LayerNorm1P; Transformer Engine's zero_centered_gamma): the norm gain is
    # stored as w, initialised to 0, and applied as (1 + w), so bf16/fp16 weights keep the precision of a value
    # near 0 rather than near 1. Same function as an ordinary norm with gain w + 1 (model/norm.py).
    norm_zero_centered: bool = False
    activation: str = "gelu"
    block: str = "sequential"
    # Parallel block only: one norm shared by attention and MLP (phi-1, PaLM) or two (GPT-NeoX).
    parallel_shared_norm: bool = True
    bias: bool = True
    tie_embeddings: bool = True
    output_bias: bool = False
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    embedding_dropout: float = 0.0
    # Structure dropout (the democratization study's dropout ablation, its Fig. 3.4): LayerDrop (Fan et al., 2019)
    # skips a whole block's residual branches with this probability per step in training, no rescaling (as
    # fairseq's LayerDropModuleList); DropHead (Zhou et al., 2020) zeroes whole attention heads per sample with this
    # probability and rescales the kept ones by 1 / (1 - p). Both draw from torch's global RNG. 0: off.
    layerdrop: float = 0.0
    drophead: float = 0.0
    init_std: float = 0.02
    # Std of the word embedding's normal init (None: init_std). PaLM: 1.0 ("E ~ N(0, 1)", Chowdhery et al. 2022,
    # sec. 2), because no LayerNorm follows the embedding; with tied embeddings pair it with output_logit_scaling.
    embedding_init_std: Optional[float] = None
    # Multiply the pre-softmax logits by 1/sqrt(hidden_size) (PaLM's shared input/output embedding, sec. 2), done
    # on the final hidden states (the head is linear), so every loss path and generation see it.
    output_logit_scaling: bool = False
    # Output projections (o_proj, fc_out/down_proj) drawn with std / sqrt(2 * num_layers) (GPT-2, Megatron).
    scaled_init: bool = True

    # The names this code used for the resolved sizes before they became the fields themselves, and Megatron's
    # config names: accepted in YAML, dotted flags and saved configs (tests/unit/test_config_names.py).
    ALIASES = {"head_size": "head_dim", "kv_channels": "head_dim", "ffn_size": "ffn_hidden_size",
               "rotary_size": "rotary_dims", "kv_heads": "num_kv_heads", "num_query_groups": "num_kv_heads"}

    # ----------------------------------------------------------------- derived sizes
    @property
    def padded_vocab_size(self) -> int:
        if self.vocab_size is None:
            raise ConfigError("model.vocab_size is unknown: give --tokenizer-type/--tokenizer-model (the size is "
                              "taken from the tokenizer) or set --model.vocab_size")
        m = self.vocab_pad_multiple
        return int(math.ceil(self.vocab_size / m) * m) if m > 1 else self.vocab_size

    # ----------------------------------------------------------------- validation
    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        for name in ("num_layers", "hidden_size", "num_attention_heads", "max_position_embeddings"):
            need(getattr(self, name) > 0, f"model.{name} must be positive, got {getattr(self, name)}")
        need(self.position_embedding in POSITION_TYPES,
             f"model.position_embedding must be one of {POSITION_TYPES}, got '{self.position_embedding}'")
        need(self.norm in NORM_TYPES, f"model.norm must be one of {NORM_TYPES}, got '{self.norm}'")
        need(self.activation in ACTIVATIONS, f"model.activation must be one of {ACTIVATIONS}, got '{self.activation}'")
        need(self.block in BLOCK_TYPES, f"model.block must be one of {BLOCK_TYPES}, got '{self.block}'")
        if self.given("head_dim") is None:
            need(self.hidden_size % self.num_attention_heads == 0,
                 f"num_attention_heads ({self.num_attention_heads}) does not divide hidden_size ({self.hidden_size}):"
                 f" choose a divisor or set model.head_dim explicitly")
        need(self.head_dim > 0, "model.head_dim must be positive")
        need(self.num_kv_heads > 0 and self.num_attention_heads % self.num_kv_heads == 0,
             f"num_kv_heads ({self.num_kv_heads}) must divide num_attention_heads ({self.num_attention_heads}): "
             f"use 1 (MQA), a divisor (GQA) or the head count (MHA)")
        if self.position_embedding == "rope":
            need(0.0 < self.rotary_percent <= 1.0, f"rotary_percent must be in (0, 1], got {self.rotary_percent}")
            r = self.rotary_dims
            need(r > 0, f"rotary dims resolve to {r}: raise rotary_percent or rotary_dims")
            need(r % 2 == 0, f"rotary dims ({r}) must be even (pairs of dims are rotated): adjust rotary_dims/percent")
            need(r <= self.head_dim, f"rotary dims ({r}) exceed head_dim ({self.head_dim})")
        for name in ("attention_dropout", "hidden_dropout", "embedding_dropout", "layerdrop", "drophead"):
            v = getattr(self, name)
            need(0.0 <= v < 1.0, f"model.{name} must be in [0, 1), got {v}")
        need(self.vocab_size is None or self.vocab_size > 0, "model.vocab_size must be positive")
        need(self.vocab_pad_multiple >= 1, "model.vocab_pad_multiple must be >= 1")
        if self.position_embedding == "t5":
            need(self.t5_buckets >= 2 and self.t5_max_distance > self.t5_buckets // 2,
                 f"model.t5_buckets ({self.t5_buckets}) must be >= 2 and model.t5_max_distance "
                 f"({self.t5_max_distance}) above half of it (T5: 32 and 128)")
        need(self.init_std > 0, "model.init_std must be positive")
        need(self.embedding_init_std is None or self.embedding_init_std > 0,
             "model.embedding_init_std must be positive")
        need(self.ffn_hidden_size > 0, "model.ffn_hidden_size must be positive")
        need(self.norm_eps > 0, f"model.norm_eps (--norm-epsilon) must be positive, got {self.norm_eps}")
        need(self.rotary_base > 0, f"model.rotary_base (--rotary-base) must be positive, got {self.rotary_base}")
        need(self.given("rotary_dims") is None or self.given("rotary_dims") >= 0, "model.rotary_dims must be >= 0")
