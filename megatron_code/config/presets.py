"""Named model presets. Each cites its source; parameter counts are asserted exactly in tests/unit/test_presets.py
(built on the meta device, so even palm-540b costs no memory)."""

from __future__ import annotations

import copy
from typing import Any

# Each preset: {"source": citation, "model": ModelConfig fields, optional "optim"/"training"/"data" fields}.
PRESETS: dict[str, dict[str, Any]] = {}


def _gpt3_shape(layers: int, hidden: int, heads: int, head_dim: int) -> dict[str, Any]:
    """GPT-3-style decoder (Brown et al., 2020, Table 2.1: n_layers, d_model, n_heads, d_head): sequential block,
    LayerNorm, GELU, learned positions, d_ff = 4 d_model."""
    return dict(num_layers=layers, hidden_size=hidden, num_attention_heads=heads, head_dim=head_dim,
                ffn_hidden_size=4 * hidden,
                position_embedding="learned", max_position_embeddings=2048, norm="layernorm", activation="gelu",
                block="sequential", bias=True, tie_embeddings=True)


def _phi(layers: int, hidden: int, heads: int) -> dict[str, Any]:
    """phi-1 (Gunasekar et al., 2023, "Textbooks Are All You Need", sec. 2.3): parallel attention+MLP with one shared
    LayerNorm, rotary on 32 dims of each 64-dim head, GELU (tanh), untied head with bias, vocab 51,200 (codegen)."""
    return dict(num_layers=layers, hidden_size=hidden, num_attention_heads=heads, ffn_hidden_size=4 * hidden,
                vocab_size=51200, max_position_embeddings=2048, position_embedding="rope", rotary_dims=32,
                norm="layernorm", activation="gelu_tanh", block="parallel", parallel_shared_norm=True, bias=True,
                tie_embeddings=False, output_bias=True)


def _palm(layers: int, hidden: int, heads: int) -> dict[str, Any]:
    """PaLM (Chowdhery et al., 2022, Table 1 and sec. 2): parallel block with one norm, SwiGLU with d_ff = 4 d_model,
    multi-query attention (heads of 256, one KV head), RoPE, no biases anywhere (norm has no bias either), shared
    input/output embeddings, 256k SentencePiece vocabulary. PaLM-Coder is PaLM fine-tuned on code: same shapes."""
    return dict(num_layers=layers, hidden_size=hidden, num_attention_heads=heads, num_kv_heads=1, head_dim=256,
                ffn_hidden_size=4 * hidden, vocab_size=256000, max_position_embeddings=2048,
                position_embedding="rope", norm="layernorm", norm_bias=False, activation="swiglu",
                block="parallel", parallel_shared_norm=True, bias=False, tie_embeddings=True)


def _democratize(layers: int, hidden: int, heads: int) -> dict[str, Any]:
    """The democratization study's code models (its Table 5.1: layers x d_model, ffn 16,384, heads of 256): RoPE,
    GELU, sequential block, attention/residual/embedding dropout 0.1. The nominal sizes 300M/2.5B/6B do not follow
    from these shapes: our build counts what the shapes give (see tests/unit/test_presets.py). The study's
    vocabulary is not given in our brief: we assume the GPT-2 BPE size, 50,257 (padded to 50,304)."""
    return dict(num_layers=layers, hidden_size=hidden, num_attention_heads=heads, head_dim=256, ffn_hidden_size=16384,
                vocab_size=50257, max_position_embeddings=2048, position_embedding="rope", norm="layernorm",
                activation="gelu", block="sequential", bias=True, tie_embeddings=True, attention_dropout=0.1,
                hidden_dropout=0.1, embedding_dropout=0.1)


_DEMOCRATIZE_OPTIM = dict(adam_beta1=0.9, adam_beta2=0.95, lr_decay_style="cosine", weight_decay=0.1)
_MIM_SOURCE = ("Nguyen et al., 2023, 'Meet in the Middle: A New Pre-training Paradigm': decoders with GPT-3 shapes "
               "(Brown et al., 2020, Table 2.1) and the cl100k vocabulary (100,257 tokens)")

PRESETS.update({
    "tiny": {
        "source": "ours: a 4-layer CPU model for quick starts and tests (vocab from the tokenizer)",
        "model": dict(num_layers=4, hidden_size=128, num_attention_heads=4, ffn_hidden_size=512,
                      max_position_embeddings=256, position_embedding="rope", rotary_percent=0.5, norm="layernorm",
                      activation="gelu", block="parallel", parallel_shared_norm=False, bias=True,
                      tie_embeddings=True),
        "data": dict(seq_length=128),
        "optim": dict(lr=2e-3, min_lr=2e-4, lr_warmup_iters=20, weight_decay=0.1, lr_decay_style="cosine"),
        "training": dict(micro_batch_size=16, train_iters=300, log_interval=20, eval_interval=50, eval_iters=8),
    },
    "phi-1": {"source": "phi-1 1.3B: Gunasekar et al., 2023 (24 layers, 2048 hidden, 32 heads of 64)",
              "model": _phi(24, 2048, 32), "data": dict(seq_length=2048),
              "optim": dict(lr=1e-3, adam_beta2=0.98, weight_decay=0.1, lr_warmup_iters=750)},
    "phi-1-small": {"source": "phi-1-small 350M: Gunasekar et al., 2023 (20 layers, 1024 hidden, 16 heads of 64)",
                    "model": _phi(20, 1024, 16), "data": dict(seq_length=2048),
                    "optim": dict(lr=1e-3, adam_beta2=0.98, weight_decay=0.1, lr_warmup_iters=750)},
    "palm-8b": {"source": "PaLM 8B: Chowdhery et al., 2022, Table 1 (32 layers, 4096, 16 heads)",
                "model": _palm(32, 4096, 16), "data": dict(seq_length=2048)},
    "palm-62b": {"source": "PaLM 62B: Chowdhery et al., 2022, Table 1 (64 layers, 8192, 32 heads)",
                 "model": _palm(64, 8192, 32), "data": dict(seq_length=2048)},
    "palm-540b": {"source": "PaLM 540B: Chowdhery et al., 2022, Table 1 (118 layers, 18432, 48 heads)",
                  "model": _palm(118, 18432, 48), "data": dict(seq_length=2048)},
    "democratize-300m": {"source": "democratization study, Table 5.1: 24 x 1024, 16 heads of 256",
                         "model": _democratize(24, 1024, 16), "optim": _DEMOCRATIZE_OPTIM,
                         "data": dict(seq_length=2048)},
    "democratize-2.5b": {"source": "democratization study, Table 5.1: 32 x 2560, 32 heads of 256",
                         "model": _democratize(32, 2560, 32), "optim": _DEMOCRATIZE_OPTIM,
                         "data": dict(seq_length=2048)},
    "democratize-6b": {"source": "democratization study, Table 5.1: 32 x 4096, 32 heads of 256",
                       "model": _democratize(32, 4096, 32), "optim": _DEMOCRATIZE_OPTIM,
                       "data": dict(seq_length=2048)},
    "mim-350m": {"source": _MIM_SOURCE + "; GPT-3 Medium 24 x 1024, 16 heads",
                 "model": dict(_gpt3_shape(24, 1024, 16, 64), vocab_size=100257), "objective": dict(objective="mim")},
    "mim-1.3b": {"source": _MIM_SOURCE + "; GPT-3 XL 24 x 2048, 24 heads of 128",
                 "model": dict(_gpt3_shape(24, 2048, 24, 128), vocab_size=100257), "objective": dict(objective="mim")},
    "mim-2.7b": {"source": _MIM_SOURCE + "; GPT-3 2.7B 32 x 2560, 32 heads of 80",
                 "model": dict(_gpt3_shape(32, 2560, 32, 80), vocab_size=100257), "objective": dict(objective="mim")},
    "jupyt5-350m": {"source": "JuPyT5 (Chandel et al., 2022) is a 350M model trained on notebooks; we give its size "
                              "as a GPT-3 Medium decoder (24 x 1024, 16 heads) with a 50,257 BPE vocabulary",
                    "model": dict(_gpt3_shape(24, 1024, 16, 64), vocab_size=50257), "data": dict(seq_length=2048)},
})


def preset_names() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        from .base import ConfigError
        raise ConfigError(f"unknown preset '{name}'; available: {', '.join(preset_names())}")
    return copy.deepcopy(PRESETS[name])
