"""Exact tensor maps between our GPT and `transformers` architectures, both directions, from one table.

Targets (chosen by :func:`choose_target` from our ModelConfig, first exact match in this order; a standard class
always wins over our own modeling code):

| our architecture                                                       | target                         |
|------------------------------------------------------------------------|--------------------------------|
| LayerNorm + GELU, sequential or parallel with two norms, MHA, rotary   | GPTNeoXForCausalLM             |
| LayerNorm + GELU, parallel with one shared norm (phi-1), MHA/GQA       | PhiForCausalLM                 |
| RMSNorm + SwiGLU, sequential, full rotary, MHA/GQA/MQA                 | LlamaForCausalLM               |
| bias-free LayerNorm + SwiGLU, parallel shared norm, full rotary (PaLM) | CohereForCausalLM              |
| LayerNorm + GELU, sequential, full rotary, any head_dim, MHA/GQA/MQA   | Starcoder2ForCausalLM          |
| LayerNorm + GELU, sequential, learned positions, heads x head = hidden | GPT2LMHeadModel                |
| anything else our model computes                                       | MegatronCodeForCausalLM (ours) |

The last one is our own modeling code (megatron_code/convert/remote/), written into the export and loaded with
``trust_remote_code=True``; it refuses a config that sets a model field it does not implement (see
:data:`REMOTE_FIELDS`), so a model feature added later cannot be exported silently wrong.

Facts each map relies on (read from transformers 5.25's modeling code):

- GPT-NeoX, Phi, Llama, Starcoder2 use the half-split ``rotate_half`` rotary on the first
  ``int(head_dim * partial_rotary_factor)`` dims, like ours (Llama and Starcoder2: always the whole head). Cohere
  rotates interleaved pairs (2i, 2i+1) with frequency i over the whole head: exporting to Cohere permutes the rows
  of q_proj/k_proj inside each head (HF dim 2i <- our dim i, HF dim 2i+1 <- our dim i + D/2); q.k is unchanged by a
  permutation applied to both; v/o are untouched. Cohere reads an explicit ``head_dim`` (PaLM 540B: 48 x 256).
- GPT-NeoX fuses q, k, v into ``query_key_value`` with rows per head: [q_h, k_h, v_h] (it views the output as
  (..., H, 3 * D)). No GQA, head_dim = hidden / heads. MLP and LayerNorms always carry biases (we write zeros when
  ours have none: exact). Its untied head is stored as ``embed_out.weight`` (what transformers writes).
- Phi: one LayerNorm per layer shared by attention and MLP, all projections biased, lm_head with a bias.
- Llama: RMSNorm in fp32 like ours; attention_bias and mlp_bias flags; explicit head_dim.
- Cohere: CohereLayerNorm = mean-subtracting LayerNorm without bias, in fp32; logits times ``logit_scale`` (1.0).
- Starcoder2: nn.LayerNorm (always a bias), non-gated MLP ``c_fc``/``c_proj`` with ``hidden_act`` (exact "gelu" or
  "gelu_pytorch_tanh"), one ``use_bias`` flag for every projection, explicit head_dim, GQA, no sliding window.
- GPT-2: learned positions ``wpe``, Conv1D weights stored (in, out) (= our Linear weight transposed), q|k|v
  concatenated in ``c_attn``, all biases, scale 1/sqrt(head_dim); head_dim is always hidden / heads.

Padded vocabulary policy: only the true ``vocab_size`` rows of the embedding / head are exported (the padded rows
exist for tensor-parallel divisibility and GEMM shapes, are never valid token ids, and our generation never
produces them), so `transformers` sees a vocabulary equal to the tokenizer's and logits over the true vocabulary
are identical. The padded size and our full ModelConfig are recorded in config.json under ``"megatron_code"`` so
an import restores the padding (padded rows come back as zeros).

The table (:data:`TABLE`) lists, per target, which of our tensors make each of its tensors and how (:data:`KINDS`);
export runs it forwards, import runs the same rows backwards. Nothing else maps names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..config.base import ConfigError
from ..config.model import ModelConfig


from .targets import (MODEL_TYPES, REMOTE, REMOTE_FIELDS, STANDARD_TARGETS, TARGETS,  # noqa: F401
                      UnsupportedArchitecture, choose_target, rotary_factor, target_problems)


# ----------------------------------------------------------------------------------------------- the key table
@dataclass(frozen=True)
class Rule:
    """Our tensors `ours` (templates with {i} = layer) make the target's tensor `theirs` through `kind`.

    fill: the target always has this tensor; when ours are absent (a bias our config turned off) zeros are written,
    which is the same function. Without fill the rule applies only when our tensors exist."""
    ours: tuple[str, ...]
    theirs: str
    kind: str = "same"
    fill: bool = False


def _qkv_heads_pack(cfg, ts):  # GPT-NeoX: rows [q_h, k_h, v_h] per head
    heads, d = cfg.num_attention_heads, cfg.head_dim
    return torch.stack([t.reshape(heads, d, *t.shape[1:]) for t in ts], 1).reshape(3 * heads * d, *ts[0].shape[1:])


def _qkv_heads_unpack(cfg, t):
    heads, d = cfg.num_attention_heads, cfg.head_dim
    parts = t.reshape(heads, 3, d, *t.shape[1:])
    return [parts[:, j].reshape(heads * d, *t.shape[1:]) for j in range(3)]


def _interleave_perm(d: int) -> torch.Tensor:
    """Row permutation for one head: HF-Cohere dim 2i <- ours i, 2i+1 <- ours i + d/2."""
    half = d // 2
    return torch.stack([torch.arange(half), torch.arange(half) + half], dim=1).reshape(-1)


def _permute_heads(w: torch.Tensor, d: int, inverse: bool = False) -> torch.Tensor:
    """Apply the per-head rotary permutation to the rows of a (H*d, ...) weight or (H*d,) bias."""
    perm = _interleave_perm(d)
    if inverse:
        perm = torch.argsort(perm)
    shape = w.shape
    return w.reshape(-1, d, *shape[1:])[:, perm].reshape(shape)


def _split_rows(cfg, t):  # GPT-2 c_attn bias: q | k | v
    return list(t.split(cfg.num_attention_heads * cfg.head_dim, 0))


# kind -> (pack: (cfg, [our tensors]) -> their tensor, unpack: (cfg, their tensor) -> [our tensors])
KINDS: dict[str, tuple[Callable, Callable]] = {
    "same": (lambda cfg, ts: ts[0], lambda cfg, t: [t]),
    "transpose": (lambda cfg, ts: ts[0].t(), lambda cfg, t: [t.t()]),  # GPT-2 Conv1D stores (in, out)
    "qkv_heads": (_qkv_heads_pack, _qkv_heads_unpack),
    "qkv_cat": (lambda cfg, ts: torch.cat(ts, 0), _split_rows),
    "qkv_cat_transpose": (lambda cfg, ts: torch.cat(ts, 0).t(), lambda cfg, t: _split_rows(cfg, t.t())),
    "rope_interleave": (lambda cfg, ts: _permute_heads(ts[0], cfg.head_dim),
                        lambda cfg, t: [_permute_heads(t, cfg.head_dim, inverse=True)]),
}


def _lin(ours: str, theirs: str, kind: str = "same", fill_bias: bool = False, bias_kind: str = "same") -> list[Rule]:
    return [Rule((f"{ours}.weight",), f"{theirs}.weight", kind),
            Rule((f"{ours}.bias",), f"{theirs}.bias", bias_kind, fill_bias)]


def _norm(ours: str, theirs: str, fill_bias: bool) -> list[Rule]:
    return [Rule((f"{ours}.weight",), f"{theirs}.weight"), Rule((f"{ours}.bias",), f"{theirs}.bias", "same", fill_bias)]


def _qkv(theirs: str, kind: str, bias_kind: str, fill_bias: bool) -> list[Rule]:
    a = "layers.{i}.attn"
    return [Rule(tuple(f"{a}.{n}_proj.weight" for n in "qkv"), f"{theirs}.weight", kind),
            Rule(tuple(f"{a}.{n}_proj.bias" for n in "qkv"), f"{theirs}.bias", bias_kind, fill_bias)]


_L, _A, _M = "layers.{i}", "layers.{i}.attn", "layers.{i}.mlp"
_HEAD = [Rule(("lm_head.weight",), "lm_head.weight")]
TABLE: dict[str, list[Rule]] = {
    "GPTNeoXForCausalLM": [
        *_norm(f"{_L}.norm1", "gpt_neox.layers.{i}.input_layernorm", True),
        *_norm(f"{_L}.norm2", "gpt_neox.layers.{i}.post_attention_layernorm", True),
        *_qkv("gpt_neox.layers.{i}.attention.query_key_value", "qkv_heads", "qkv_heads", False),
        *_lin(f"{_A}.o_proj", "gpt_neox.layers.{i}.attention.dense"),
        *_lin(f"{_M}.fc_in", "gpt_neox.layers.{i}.mlp.dense_h_to_4h", fill_bias=True),
        *_lin(f"{_M}.fc_out", "gpt_neox.layers.{i}.mlp.dense_4h_to_h", fill_bias=True),
        Rule(("embed.word.weight",), "gpt_neox.embed_in.weight"),
        *_norm("final_norm", "gpt_neox.final_layer_norm", True),
        # transformers 5.x still writes GPT-NeoX's head as embed_out (and renames on load): older versions load it
        Rule(("lm_head.weight",), "embed_out.weight"),
    ],
    "PhiForCausalLM": [
        *_norm(f"{_L}.norm1", "model.layers.{i}.input_layernorm", True),
        *[r for n in "qkv" for r in _lin(f"{_A}.{n}_proj", f"model.layers.{{i}}.self_attn.{n}_proj", fill_bias=True)],
        *_lin(f"{_A}.o_proj", "model.layers.{i}.self_attn.dense", fill_bias=True),
        *_lin(f"{_M}.fc_in", "model.layers.{i}.mlp.fc1", fill_bias=True),
        *_lin(f"{_M}.fc_out", "model.layers.{i}.mlp.fc2", fill_bias=True),
        Rule(("embed.word.weight",), "model.embed_tokens.weight"),
        *_norm("final_norm", "model.final_layernorm", True),
        *_HEAD, Rule(("lm_head.bias",), "lm_head.bias", "same", True),
    ],
    "LlamaForCausalLM": [
        *_norm(f"{_L}.norm1", "model.layers.{i}.input_layernorm", False),
        *_norm(f"{_L}.norm2", "model.layers.{i}.post_attention_layernorm", False),
        *[r for n in "qkvo" for r in _lin(f"{_A}.{n}_proj", f"model.layers.{{i}}.self_attn.{n}_proj")],
        *[r for n in ("gate", "up", "down") for r in _lin(f"{_M}.{n}_proj", f"model.layers.{{i}}.mlp.{n}_proj")],
        Rule(("embed.word.weight",), "model.embed_tokens.weight"),
        *_norm("final_norm", "model.norm", False),
        *_HEAD,
    ],
    "CohereForCausalLM": [
        *_norm(f"{_L}.norm1", "model.layers.{i}.input_layernorm", False),
        *[r for n in "qk" for r in _lin(f"{_A}.{n}_proj", f"model.layers.{{i}}.self_attn.{n}_proj",
                                        "rope_interleave", bias_kind="rope_interleave")],
        *[r for n in "vo" for r in _lin(f"{_A}.{n}_proj", f"model.layers.{{i}}.self_attn.{n}_proj")],
        *[r for n in ("gate", "up", "down") for r in _lin(f"{_M}.{n}_proj", f"model.layers.{{i}}.mlp.{n}_proj")],
        Rule(("embed.word.weight",), "model.embed_tokens.weight"),
        *_norm("final_norm", "model.norm", False),
        *_HEAD,
    ],
    "Starcoder2ForCausalLM": [
        *_norm(f"{_L}.norm1", "model.layers.{i}.input_layernorm", True),
        *_norm(f"{_L}.norm2", "model.layers.{i}.post_attention_layernorm", True),
        *[r for n in "qkvo" for r in _lin(f"{_A}.{n}_proj", f"model.layers.{{i}}.self_attn.{n}_proj")],
        *_lin(f"{_M}.fc_in", "model.layers.{i}.mlp.c_fc"),
        *_lin(f"{_M}.fc_out", "model.layers.{i}.mlp.c_proj"),
        Rule(("embed.word.weight",), "model.embed_tokens.weight"),
        *_norm("final_norm", "model.norm", True),
        *_HEAD,
    ],
    "GPT2LMHeadModel": [
        *_norm(f"{_L}.norm1", "transformer.h.{i}.ln_1", True),
        *_norm(f"{_L}.norm2", "transformer.h.{i}.ln_2", True),
        *_qkv("transformer.h.{i}.attn.c_attn", "qkv_cat_transpose", "qkv_cat", True),
        *_lin(f"{_A}.o_proj", "transformer.h.{i}.attn.c_proj", "transpose", fill_bias=True),
        *_lin(f"{_M}.fc_in", "transformer.h.{i}.mlp.c_fc", "transpose", fill_bias=True),
        *_lin(f"{_M}.fc_out", "transformer.h.{i}.mlp.c_proj", "transpose", fill_bias=True),
        Rule(("embed.word.weight",), "transformer.wte.weight"),
        Rule(("embed.position.weight",), "transformer.wpe.weight"),
        *_norm("final_norm", "transformer.ln_f", True),
        *_HEAD,
    ],
    REMOTE: [],  # our own module names (megatron_code/convert/remote/modeling_megatron_code.py): identity
}


# other names the same tensor is stored under (GPT-NeoX's head: embed_out by transformers' save, lm_head in its
# module tree; either is read)
ALIASES = {"embed_out.weight": "lm_head.weight"}


def expand(target: str, cfg: ModelConfig, keys) -> list[Rule]:
    """The target's rules with {i} filled for every layer (REMOTE: one identity rule per key of ours)."""
    if target == REMOTE:
        return [Rule((k,), k) for k in keys]
    out = []
    for rule in TABLE[target]:
        if "{i}" in rule.theirs:
            out.extend(Rule(tuple(o.format(i=i) for o in rule.ours), rule.theirs.format(i=i), rule.kind, rule.fill)
                       for i in range(cfg.num_layers))
        else:
            out.append(rule)
    return out


# ----------------------------------------------------------------------------------------------- export
HF_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "swiglu": "silu", "relu": "relu"}


def hf_config_kwargs(cfg: ModelConfig, target: str) -> dict:
    """Keyword arguments for the target's config class (vocab_size = the true vocabulary)."""
    kw = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
              num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.ffn_hidden_size,
              max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=cfg.tie_embeddings,
              initializer_range=cfg.init_std, architectures=[target], dtype="float32",
              rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rotary_base)})
    act = HF_ACT.get(cfg.activation)  # elu: our modeling code only (transformers' ACT2FN has no ELU)
    if target == "GPTNeoXForCausalLM":
        kw.update(hidden_act=act, layer_norm_eps=cfg.norm_eps, use_parallel_residual=cfg.block == "parallel",
                  attention_bias=cfg.bias, attention_dropout=cfg.attention_dropout, hidden_dropout=cfg.hidden_dropout)
        kw["rope_parameters"]["partial_rotary_factor"] = rotary_factor(cfg)
    elif target == "PhiForCausalLM":
        kw.update(hidden_act=act, layer_norm_eps=cfg.norm_eps, num_key_value_heads=cfg.num_kv_heads,
                  resid_pdrop=cfg.hidden_dropout, embd_pdrop=cfg.embedding_dropout,
                  attention_dropout=cfg.attention_dropout, qk_layernorm=False)
        kw["rope_parameters"]["partial_rotary_factor"] = rotary_factor(cfg)
    elif target == "LlamaForCausalLM":
        kw.update(hidden_act=act, rms_norm_eps=cfg.norm_eps, num_key_value_heads=cfg.num_kv_heads,
                  head_dim=cfg.head_dim, attention_bias=cfg.bias, mlp_bias=cfg.bias,
                  attention_dropout=cfg.attention_dropout)
    elif target == "CohereForCausalLM":
        kw.update(hidden_act=act, layer_norm_eps=cfg.norm_eps, num_key_value_heads=cfg.num_kv_heads,
                  head_dim=cfg.head_dim, attention_bias=False, use_qk_norm=False,
                  logit_scale=cfg.hidden_size ** -0.5 if cfg.output_logit_scaling else 1.0,
                  attention_dropout=cfg.attention_dropout)
    elif target == "Starcoder2ForCausalLM":
        kw.update(hidden_act=act, norm_epsilon=cfg.norm_eps, num_key_value_heads=cfg.num_kv_heads,
                  head_dim=cfg.head_dim, use_bias=cfg.bias, sliding_window=None,
                  attention_dropout=cfg.attention_dropout, residual_dropout=cfg.hidden_dropout,
                  embedding_dropout=cfg.embedding_dropout)
    elif target == "GPT2LMHeadModel":
        kw = dict(vocab_size=cfg.vocab_size, n_embd=cfg.hidden_size, n_layer=cfg.num_layers,
                  n_head=cfg.num_attention_heads, n_inner=cfg.ffn_hidden_size, n_positions=cfg.max_position_embeddings,
                  activation_function=act, layer_norm_epsilon=cfg.norm_eps, resid_pdrop=cfg.hidden_dropout,
                  embd_pdrop=cfg.embedding_dropout, attn_pdrop=cfg.attention_dropout, scale_attn_weights=True,
                  scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False,
                  tie_word_embeddings=cfg.tie_embeddings, initializer_range=cfg.init_std, architectures=[target],
                  dtype="float32")
    elif target == REMOTE:
        kw = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                  num_attention_heads=cfg.num_attention_heads, max_position_embeddings=cfg.max_position_embeddings,
                  tie_word_embeddings=False, architectures=[target], dtype="float32")
    return kw


def _zeros_for(key: str, sd: dict[str, torch.Tensor]) -> torch.Tensor:
    """Zeros standing for our absent bias `key`: as many as its weight's rows (lm_head.bias of a tied head: the
    embedding's rows)."""
    w = sd.get(key[:-len("bias")] + "weight")
    if w is None and key == "lm_head.bias":
        w = sd["embed.word.weight"]
    return torch.zeros(w.shape[0], dtype=w.dtype)


def to_hf_state_dict(cfg: ModelConfig, sd: dict[str, torch.Tensor], target: str) -> dict[str, torch.Tensor]:
    """Our full state dict -> the target's tensor names (true vocab rows only; a tied head is not written)."""
    v = cfg.vocab_size
    sd = {k: (t[:v] if k in ("embed.word.weight", "lm_head.weight", "lm_head.bias") else t) for k, t in sd.items()}
    out: dict[str, torch.Tensor] = {}
    pack = {k: p for k, (p, _) in KINDS.items()}
    for rule in expand(target, cfg, sd.keys()):
        present = [k in sd for k in rule.ours]
        if not any(present) and not rule.fill:
            continue
        parts = [sd[k] if k in sd else _zeros_for(k, sd) for k in rule.ours]
        out[rule.theirs] = pack[rule.kind](cfg, parts)
    used = {k for rule in expand(target, cfg, sd.keys()) for k in rule.ours}
    missed = sorted(set(sd) - used)
    if missed:  # a bug in the table, never a user error
        raise RuntimeError(f"{target} key table leaves our tensors unexported: {missed[:5]}")
    return {k: t.detach().to(torch.float32).contiguous().clone() for k, t in out.items()}


# ----------------------------------------------------------------------------------------------- import
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
                  "relu": "relu"}


def _nonzero(tensors) -> bool:
    return any(bool(t.abs().max() > 0) for t in tensors if t is not None and t.numel())


def _rope(hf_cfg, target: str) -> tuple[float, float]:
    rp = dict(getattr(hf_cfg, "rope_parameters", None) or {})
    kind = rp.get("rope_type", "default")
    if kind != "default":
        raise UnsupportedArchitecture(f"{target} uses rope_type={kind!r} (scaled rotary); our model implements plain "
                                      f"rotary only, so the import is refused rather than approximated")
    partial = target in ("GPTNeoXForCausalLM", "PhiForCausalLM")
    factor = rp.get("partial_rotary_factor", 1.0) if partial else 1.0
    return float(rp.get("rope_theta", 10000.0)), float(factor)


def _activation(target: str, act) -> str:
    if act not in HF_ACTIVATIONS:
        raise UnsupportedArchitecture(f"{target} with hidden_act={act!r}: we implement gelu, tanh-gelu and relu "
                                      f"only")
    return HF_ACTIVATIONS[act]


def from_hf_config(hf_cfg, sd: dict[str, torch.Tensor]) -> tuple[str, ModelConfig]:
    """(target, our ModelConfig) for a transformers config + its state dict; refuses what we cannot express."""
    target = MODEL_TYPES.get(getattr(hf_cfg, "model_type", None))
    if target is None:
        raise UnsupportedArchitecture(f"model_type {getattr(hf_cfg, 'model_type', None)!r} is not supported; "
                                      f"import handles {', '.join(MODEL_TYPES)}")
    if target == REMOTE:
        return target, _remote_config(hf_cfg)
    if target == "GPT2LMHeadModel":
        return target, _gpt2_config(hf_cfg, sd)
    act = getattr(hf_cfg, "hidden_act", None)
    heads, hidden = hf_cfg.num_attention_heads, hf_cfg.hidden_size
    head_dim = getattr(hf_cfg, "head_dim", None) or hidden // heads
    theta, factor = _rope(hf_cfg, target)
    kw = dict(num_layers=hf_cfg.num_hidden_layers, hidden_size=hidden, num_attention_heads=heads,
              num_kv_heads=getattr(hf_cfg, "num_key_value_heads", None) or heads,
              head_dim=None if head_dim * heads == hidden else head_dim, ffn_hidden_size=hf_cfg.intermediate_size,
              vocab_size=hf_cfg.vocab_size, vocab_pad_multiple=1,
              max_position_embeddings=hf_cfg.max_position_embeddings,
              position_embedding="rope", rotary_dims=int(head_dim * factor), rotary_base=theta,
              tie_embeddings=bool(getattr(hf_cfg, "tie_word_embeddings", False)), output_bias=False)
    if kw["num_kv_heads"] == heads:
        kw["num_kv_heads"] = None
    if target in ("GPTNeoXForCausalLM", "PhiForCausalLM"):
        kw.update(norm="layernorm", norm_eps=hf_cfg.layer_norm_eps, activation=_activation(target, act))
        if target == "GPTNeoXForCausalLM":
            kw.update(block="parallel" if hf_cfg.use_parallel_residual else "sequential", parallel_shared_norm=False)
        else:
            if getattr(hf_cfg, "qk_layernorm", False):
                raise UnsupportedArchitecture("Phi with qk_layernorm=True: our attention has no q/k LayerNorm")
            kw.update(block="parallel", parallel_shared_norm=True)
    elif target == "Starcoder2ForCausalLM":
        if getattr(hf_cfg, "sliding_window", None) is not None:
            raise UnsupportedArchitecture(f"Starcoder2 with sliding_window={hf_cfg.sliding_window}: our attention "
                                          f"is full causal attention")
        kw.update(norm="layernorm", norm_eps=hf_cfg.norm_epsilon, activation=_activation(target, act),
                  block="sequential")
    else:
        if act != "silu":
            raise UnsupportedArchitecture(f"{target} with hidden_act={act!r}: our gated MLP is SwiGLU (silu) only")
        kw.update(activation="swiglu")
        if target == "LlamaForCausalLM":
            kw.update(norm="rmsnorm", norm_eps=hf_cfg.rms_norm_eps, block="sequential", norm_bias=False)
        else:
            if getattr(hf_cfg, "use_qk_norm", False):
                raise UnsupportedArchitecture("Cohere with use_qk_norm=True: our attention has no q/k norm")
            scale = getattr(hf_cfg, "logit_scale", 1.0)
            palm_scale = hf_cfg.hidden_size ** -0.5  # our output_logit_scaling (PaLM's 1/sqrt(d))
            if scale is not None and float(scale) not in (1.0, palm_scale):
                raise UnsupportedArchitecture(f"Cohere with logit_scale={scale}: our model scales logits by 1 or "
                                              f"1/sqrt(hidden_size) = {palm_scale:g} only (folding it into the "
                                              f"weights would not be exact with tied embeddings)")
            kw.update(output_logit_scaling=scale is not None and float(scale) == palm_scale != 1.0)
            kw.update(norm="layernorm", norm_bias=False, norm_eps=hf_cfg.layer_norm_eps, block="parallel",
                      parallel_shared_norm=True)
    kw.update(_bias_flags(target, hf_cfg, sd))
    return target, _finish(kw, hf_cfg, target)


def _gpt2_config(hf_cfg, sd) -> ModelConfig:
    if not getattr(hf_cfg, "scale_attn_weights", True) or getattr(hf_cfg, "scale_attn_by_inverse_layer_idx", False):
        raise UnsupportedArchitecture("GPT-2 without the 1/sqrt(head_dim) attention scale (scale_attn_weights=False "
                                      "or scale_attn_by_inverse_layer_idx=True): our attention always scales so")
    target = "GPT2LMHeadModel"
    kw = dict(num_layers=hf_cfg.n_layer, hidden_size=hf_cfg.n_embd, num_attention_heads=hf_cfg.n_head,
              ffn_hidden_size=hf_cfg.n_inner or 4 * hf_cfg.n_embd, vocab_size=hf_cfg.vocab_size, vocab_pad_multiple=1,
              max_position_embeddings=hf_cfg.n_positions, position_embedding="learned", norm="layernorm",
              norm_eps=hf_cfg.layer_norm_epsilon, activation=_activation(target, hf_cfg.activation_function),
              block="sequential", tie_embeddings=bool(getattr(hf_cfg, "tie_word_embeddings", True)),
              output_bias=False)
    kw.update(_bias_flags(target, hf_cfg, sd))
    return _finish(kw, hf_cfg, target)


def _remote_config(hf_cfg) -> ModelConfig:
    record = getattr(hf_cfg, "megatron_code", None)
    if not isinstance(record, dict):
        raise UnsupportedArchitecture("a megatron_code model directory without its \"megatron_code\" config record")
    fields = {k: v for k, v in record.items() if k in ModelConfig.__dataclass_fields__}
    try:
        cfg = ModelConfig(**fields)
        cfg.validate()
    except (ConfigError, TypeError) as exc:
        raise UnsupportedArchitecture(f"the recorded megatron_code model config is invalid: {exc}") from None
    return cfg


def _finish(kw: dict, hf_cfg, target: str) -> ModelConfig:
    cfg = ModelConfig(**kw)
    try:
        cfg.validate()
    except ConfigError as exc:
        raise UnsupportedArchitecture(f"{target} config cannot be expressed: {exc}") from None
    recorded = _config_from_record(getattr(hf_cfg, "megatron_code", None), cfg, target)
    return recorded if recorded is not None else cfg


def _bias_flags(target: str, hf_cfg, sd) -> dict:
    """bias / norm_bias / output_bias from the tensors: a flag is on when its tensors exist and are not all zero
    (all-zero biases are exactly the same function as no bias), or when attention_bias/use_bias says so."""
    layer = (".layers.", "transformer.h.")
    # (old GPT-2 files carry their causal-mask buffers as attn.bias / attn.masked_bias: not parameters)
    biases = [t for k, t in sd.items() if k.endswith(".bias") and any(s in k for s in layer) and not _is_norm(k)
              and not k.endswith(("attn.bias", "attn.masked_bias"))]
    norm_biases = [t for k, t in sd.items() if k.endswith(".bias") and _is_norm(k)]
    declared = bool(getattr(hf_cfg, "attention_bias", False)) or (
        target == "Starcoder2ForCausalLM" and bool(getattr(hf_cfg, "use_bias", False)))
    out = {"bias": declared or _nonzero(biases)}
    if target in ("GPTNeoXForCausalLM", "PhiForCausalLM", "Starcoder2ForCausalLM", "GPT2LMHeadModel"):
        out["norm_bias"] = _nonzero(norm_biases)
    if target == "PhiForCausalLM":
        out["output_bias"] = _nonzero([sd.get("lm_head.bias")])
        out["tie_embeddings"] = bool(getattr(hf_cfg, "tie_word_embeddings", False)) and not out["output_bias"]
    return out


def _is_norm(key: str) -> bool:
    return "norm" in key or ".ln_" in key


ARCH_PROPERTIES = ("num_layers", "hidden_size", "num_attention_heads", "num_kv_heads", "head_dim", "ffn_hidden_size",
                   "vocab_size", "max_position_embeddings", "position_embedding", "rotary_dims", "rotary_base",
                   "norm", "norm_eps", "activation", "block", "tie_embeddings", "output_logit_scaling")


def _config_from_record(record, inferred: ModelConfig, target: str) -> ModelConfig | None:
    """Our own exported ModelConfig (config.json "megatron_code"), if it describes exactly the inferred function:
    it restores the padding, init, dropout and bias flags (biases that were zero at export stay trainable)."""
    if not isinstance(record, dict):
        return None
    fields = {k: v for k, v in record.items() if k in ModelConfig.__dataclass_fields__}
    try:
        rec = ModelConfig(**fields)
        rec.validate()
    except (ConfigError, TypeError):
        return None
    same = all(getattr(rec, k) == getattr(inferred, k) for k in ARCH_PROPERTIES)
    if rec.block == "parallel":
        same = same and rec.parallel_shared_norm == inferred.parallel_shared_norm
    # a flag may be on in the record with all-zero tensors, never off while the tensors are non-zero
    same = same and all(getattr(rec, f) or not getattr(inferred, f) for f in ("bias", "norm_bias", "output_bias"))
    try:
        same = same and choose_target(rec, target) == target
    except UnsupportedArchitecture:
        return None
    return rec if same else None


def from_hf_state_dict(cfg: ModelConfig, sd: dict[str, torch.Tensor], target: str) -> dict[str, torch.Tensor]:
    """The target's tensors -> our full state dict, by the same table run backwards (padded vocab rows are zeros;
    biases the target has but our config turned off were checked to be zeros by _bias_flags and are dropped;
    biases our config has but the target lacks are zeros)."""
    from ..model import GPT

    with torch.device("meta"):
        expected = {k: tuple(t.shape) for k, t in GPT(cfg).state_dict().items()}
    unpack = {k: u for k, (_, u) in KINDS.items()}
    got: dict[str, torch.Tensor] = {}
    for rule in expand(target, cfg, expected):
        name = rule.theirs
        if name not in sd and name in ALIASES:
            name = ALIASES[name]
        if name in sd:
            got.update(zip(rule.ours, unpack[rule.kind](cfg, sd[name])))
    out: dict[str, torch.Tensor] = {}
    for key, shape in expected.items():
        if key in got:
            t = got[key]
        elif key == "lm_head.weight" and "embed.word.weight" in got:
            t = got["embed.word.weight"]  # a tied HF head imported untied (ours cannot tie with an output bias)
        elif key.endswith(".bias"):
            t = torch.zeros(shape)
        else:
            raise UnsupportedArchitecture(f"the {target} checkpoint has no tensor for our {key!r}: incomplete or "
                                          f"not a {target} checkpoint")
        if key in ("embed.word.weight", "lm_head.weight", "lm_head.bias"):
            t = _pad_rows(t, shape[0])
        if tuple(t.shape) != shape:
            raise UnsupportedArchitecture(f"the {target} checkpoint's tensor for {key!r} has shape {tuple(t.shape)}, "
                                          f"the config says {shape}")
        out[key] = t
    return {k: t.detach().to(torch.float32).contiguous().clone() for k, t in out.items()}


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """Append zero rows up to `rows` (the padded vocabulary)."""
    if t.shape[0] > rows:
        raise UnsupportedArchitecture(f"tensor has {t.shape[0]} vocabulary rows but the config says {rows}")
    pad = torch.zeros(rows - t.shape[0], *t.shape[1:], dtype=t.dtype)
    return torch.cat([t, pad], 0)
