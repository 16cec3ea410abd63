"""Exact tensor maps between our GPT and four `transformers` architectures, both directions.

Targets (chosen by :func:`choose_target` from our ModelConfig; anything not listed is refused, never
approximated):

| our architecture                                                     | target                 |
|----------------------------------------------------------------------|------------------------|
| LayerNorm + GELU, sequential or parallel with two norms, MHA         | GPTNeoXForCausalLM     |
| LayerNorm + GELU, parallel with one shared norm (phi-1), MHA/GQA     | PhiForCausalLM         |
| RMSNorm + SwiGLU, sequential, full rotary, MHA/GQA/MQA               | LlamaForCausalLM       |
| bias-free LayerNorm + SwiGLU, parallel shared norm, full rotary (PaLM) | CohereForCausalLM    |

Facts each map relies on (read from transformers 5.23's modeling code):

- All four use the half-split ``rotate_half`` rotary on the first ``int(head_dim * partial_rotary_factor)`` dims,
  like ours, except Cohere: it rotates interleaved pairs (2i, 2i+1) with frequency i over the whole head. Ours rotates
  (i, i + D/2). Exporting to Cohere therefore permutes the rows of q_proj/k_proj inside each head (HF dim 2i <- our
  dim i, HF dim 2i+1 <- our dim i + D/2); q.k is unchanged by a permutation applied to both, v/o are untouched.
- GPT-NeoX fuses q, k, v into ``query_key_value`` with rows ordered per head: [q_h, k_h, v_h] for h = 0..H-1
  (it views the output as (..., H, 3 * D) and chunks the last dim). It has no GQA and no head_dim != hidden/H.
  Its MLP always has biases and its LayerNorms always have a bias: when ours have none we write zeros (exact).
  Its untied head is stored as ``embed_out.weight`` (what transformers' own save_pretrained writes).
- Phi: one LayerNorm per layer shared by attention and MLP (parallel block), all projections biased, an lm_head with
  bias (zeros when ours has none).
- Llama: RMSNorm computed in fp32 like ours; no partial rotary (the head is fully rotated); attention_bias and
  mlp_bias flags.
- Cohere: CohereLayerNorm is mean-subtracting LayerNorm without bias (= our LayerNorm with norm_bias=False),
  computed in fp32; logits are multiplied by ``logit_scale`` (we write 1.0); MLP is bias-free; use_qk_norm off.

Padded vocabulary policy: only the true ``vocab_size`` rows of the embedding / head are exported (the padded rows
exist for tensor-parallel divisibility and GEMM shapes, are never valid token ids, and our generation never
produces them), so `transformers` sees a vocabulary equal to the tokenizer's and logits over the true vocabulary
are identical. The padded size and our full ModelConfig are recorded in config.json under ``"megatron_code"`` so
an import restores the padding (padded rows come back as zeros).
"""

from __future__ import annotations

import torch

from ..config.base import ConfigError
from ..config.model import ModelConfig


class UnsupportedArchitecture(ConfigError):
    """The model cannot be expressed exactly by any supported `transformers` architecture (or vice versa)."""


TARGETS = ("GPTNeoXForCausalLM", "PhiForCausalLM", "LlamaForCausalLM", "CohereForCausalLM")
MODEL_TYPES = {"gpt_neox": "GPTNeoXForCausalLM", "phi": "PhiForCausalLM", "llama": "LlamaForCausalLM",
               "cohere": "CohereForCausalLM"}


# ----------------------------------------------------------------------------------------------- target choice
def _describe(cfg: ModelConfig) -> str:
    return (f"block={cfg.block}{' (shared norm)' if cfg.block == 'parallel' and cfg.parallel_shared_norm else ''}, "
            f"norm={cfg.norm}{'' if cfg.norm_bias else ' (no bias)'}, activation={cfg.activation}, "
            f"heads={cfg.num_attention_heads}/kv={cfg.kv_heads}, head_dim={cfg.head_size}, "
            f"rotary dims={cfg.rotary_size}, position={cfg.position_embedding}, bias={cfg.bias}, "
            f"output_bias={cfg.output_bias}")


def target_problems(cfg: ModelConfig, target: str) -> list[str]:
    """Reasons why `target` cannot express `cfg` exactly (empty list: it can)."""
    p: list[str] = []
    if cfg.position_embedding != "rope":
        p.append(f"position_embedding={cfg.position_embedding!r} (all targets use rotary embeddings only)")
    natural_head = cfg.hidden_size // cfg.num_attention_heads
    gelu = cfg.activation in ("gelu", "gelu_tanh")
    if target == "GPTNeoXForCausalLM":
        if cfg.norm != "layernorm" or not gelu:
            p.append("GPT-NeoX needs LayerNorm + GELU")
        if cfg.block == "parallel" and cfg.parallel_shared_norm:
            p.append("GPT-NeoX's parallel block has two norms (a shared norm is the phi-1 layout)")
        if cfg.kv_heads != cfg.num_attention_heads:
            p.append("GPT-NeoX has no grouped/multi-query attention")
        if cfg.head_size * cfg.num_attention_heads != cfg.hidden_size:
            p.append("GPT-NeoX needs head_dim x heads == hidden_size")
        if cfg.output_bias:
            p.append("GPT-NeoX's output head has no bias")
    elif target == "PhiForCausalLM":
        if cfg.norm != "layernorm" or not gelu:
            p.append("Phi needs LayerNorm + GELU")
        if not (cfg.block == "parallel" and cfg.parallel_shared_norm):
            p.append("Phi needs a parallel block with one shared norm")
        if cfg.head_size != natural_head or cfg.hidden_size % cfg.num_attention_heads:
            p.append("Phi needs head_dim == hidden_size / heads")
    elif target == "LlamaForCausalLM":
        if cfg.norm != "rmsnorm" or cfg.activation != "swiglu" or cfg.block != "sequential":
            p.append("Llama needs RMSNorm + SwiGLU + sequential block")
        if cfg.rotary_size != cfg.head_size:
            p.append("Llama rotates the whole head (no partial rotary)")
        if cfg.hidden_size % cfg.num_attention_heads:
            p.append("Llama needs heads to divide hidden_size")
        if cfg.output_bias:
            p.append("Llama's output head has no bias")
    elif target == "CohereForCausalLM":
        if cfg.norm != "layernorm" or cfg.norm_bias:
            p.append("Cohere needs a bias-free LayerNorm")
        if cfg.activation != "swiglu" or not (cfg.block == "parallel" and cfg.parallel_shared_norm):
            p.append("Cohere needs SwiGLU + a parallel block with one shared norm")
        if cfg.bias:
            p.append("Cohere's MLP has no biases (set bias false)")
        if cfg.rotary_size != cfg.head_size:
            p.append("Cohere rotates the whole head (no partial rotary)")
        if cfg.head_size != natural_head or cfg.hidden_size % cfg.num_attention_heads:
            p.append("Cohere needs head_dim == hidden_size / heads")
        if cfg.output_bias:
            p.append("Cohere's output head has no bias")
    else:
        raise UnsupportedArchitecture(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    return p


def choose_target(cfg: ModelConfig, target: str | None = None) -> str:
    """The HF architecture that expresses `cfg` exactly, or UnsupportedArchitecture naming what does not fit."""
    candidates = [target] if target else list(TARGETS)
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
    d, r = cfg.head_size, cfg.rotary_size
    f = r / d
    while int(d * f) < r:  # e.g. r=10, d=30: 30 * (1/3) = 9.999...
        f = float(torch.nextafter(torch.tensor(f, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64)))
    return f


# ----------------------------------------------------------------------------------------------- helpers
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


def _zeros_like_bias(rows: int) -> torch.Tensor:
    return torch.zeros(rows)


# ----------------------------------------------------------------------------------------------- export
def hf_config_kwargs(cfg: ModelConfig, target: str) -> dict:
    """Keyword arguments for the target's config class (vocab_size = the true vocabulary)."""
    kw = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
              num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.ffn_size,
              max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=cfg.tie_embeddings,
              initializer_range=cfg.init_std, architectures=[target], dtype="float32",
              rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rotary_base)})
    act = "gelu" if cfg.activation == "gelu" else "gelu_pytorch_tanh"
    if target == "GPTNeoXForCausalLM":
        kw.update(hidden_act=act, layer_norm_eps=cfg.norm_eps, use_parallel_residual=cfg.block == "parallel",
                  attention_bias=cfg.bias, attention_dropout=cfg.attention_dropout, hidden_dropout=cfg.hidden_dropout)
        kw["rope_parameters"]["partial_rotary_factor"] = rotary_factor(cfg)
    elif target == "PhiForCausalLM":
        kw.update(hidden_act=act, layer_norm_eps=cfg.norm_eps, num_key_value_heads=cfg.kv_heads,
                  resid_pdrop=cfg.hidden_dropout, embd_pdrop=cfg.embedding_dropout,
                  attention_dropout=cfg.attention_dropout, qk_layernorm=False)
        kw["rope_parameters"]["partial_rotary_factor"] = rotary_factor(cfg)
    elif target == "LlamaForCausalLM":
        kw.update(hidden_act="silu", rms_norm_eps=cfg.norm_eps, num_key_value_heads=cfg.kv_heads,
                  head_dim=cfg.head_size, attention_bias=cfg.bias, mlp_bias=cfg.bias,
                  attention_dropout=cfg.attention_dropout)
    elif target == "CohereForCausalLM":
        kw.update(hidden_act="silu", layer_norm_eps=cfg.norm_eps, num_key_value_heads=cfg.kv_heads,
                  attention_bias=False, use_qk_norm=False, logit_scale=1.0, attention_dropout=cfg.attention_dropout)
    return kw


def to_hf_state_dict(cfg: ModelConfig, sd: dict[str, torch.Tensor], target: str) -> dict[str, torch.Tensor]:
    """Our full state dict -> the target's tensor names (true vocab rows only; tied head not written)."""
    v, d, h = cfg.vocab_size, cfg.head_size, cfg.hidden_size
    out: dict[str, torch.Tensor] = {}

    def norm(dst: str, src: str, with_bias: bool) -> None:
        out[f"{dst}.weight"] = sd[f"{src}.weight"]
        if with_bias:
            out[f"{dst}.bias"] = sd.get(f"{src}.bias", _zeros_like_bias(h))

    def linear(dst: str, src: str, with_bias: bool) -> None:
        w = sd[f"{src}.weight"]
        out[f"{dst}.weight"] = w
        if with_bias:
            out[f"{dst}.bias"] = sd.get(f"{src}.bias", _zeros_like_bias(w.shape[0]))

    embed = sd["embed.word.weight"][:v]
    head_w = None if cfg.tie_embeddings else sd["lm_head.weight"][:v]
    head_b = sd["lm_head.bias"][:v] if cfg.output_bias else None
    for i in range(cfg.num_layers):
        s = f"layers.{i}"
        if target == "GPTNeoXForCausalLM":
            p = f"gpt_neox.layers.{i}"
            norm(f"{p}.input_layernorm", f"{s}.norm1", True)
            norm(f"{p}.post_attention_layernorm", f"{s}.norm2", True)
            heads = cfg.num_attention_heads
            qkv = [sd[f"{s}.attn.{n}_proj.weight"].reshape(heads, d, h) for n in "qkv"]
            out[f"{p}.attention.query_key_value.weight"] = torch.stack(qkv, 1).reshape(3 * heads * d, h)
            if cfg.bias:
                qkv_b = [sd[f"{s}.attn.{n}_proj.bias"].reshape(heads, d) for n in "qkv"]
                out[f"{p}.attention.query_key_value.bias"] = torch.stack(qkv_b, 1).reshape(-1)
            linear(f"{p}.attention.dense", f"{s}.attn.o_proj", cfg.bias)
            linear(f"{p}.mlp.dense_h_to_4h", f"{s}.mlp.fc_in", True)
            linear(f"{p}.mlp.dense_4h_to_h", f"{s}.mlp.fc_out", True)
        elif target == "PhiForCausalLM":
            p = f"model.layers.{i}"
            norm(f"{p}.input_layernorm", f"{s}.norm1", True)
            for n in "qkv":
                linear(f"{p}.self_attn.{n}_proj", f"{s}.attn.{n}_proj", True)
            linear(f"{p}.self_attn.dense", f"{s}.attn.o_proj", True)
            linear(f"{p}.mlp.fc1", f"{s}.mlp.fc_in", True)
            linear(f"{p}.mlp.fc2", f"{s}.mlp.fc_out", True)
        else:  # Llama / Cohere: same projection names
            p = f"model.layers.{i}"
            norm(f"{p}.input_layernorm", f"{s}.norm1", False)
            if target == "LlamaForCausalLM":
                norm(f"{p}.post_attention_layernorm", f"{s}.norm2", False)
            for n in ("q", "k", "v", "o"):
                linear(f"{p}.self_attn.{n}_proj", f"{s}.attn.{n}_proj", cfg.bias)
            for n in ("gate", "up", "down"):
                linear(f"{p}.mlp.{n}_proj", f"{s}.mlp.{n}_proj", cfg.bias)
            if target == "CohereForCausalLM":
                for n in ("q", "k"):
                    key = f"{p}.self_attn.{n}_proj.weight"
                    out[key] = _permute_heads(out[key], d)
    if target == "GPTNeoXForCausalLM":
        out["gpt_neox.embed_in.weight"] = embed
        norm("gpt_neox.final_layer_norm", "final_norm", True)
    else:
        out["model.embed_tokens.weight"] = embed
        final = {"PhiForCausalLM": "model.final_layernorm"}.get(target, "model.norm")
        norm(final, "final_norm", target == "PhiForCausalLM")
    if head_w is not None:
        # transformers (5.x) still writes GPT-NeoX's head under its legacy name embed_out (and renames on load);
        # we write what transformers itself writes, so older versions load it too.
        out["embed_out.weight" if target == "GPTNeoXForCausalLM" else "lm_head.weight"] = head_w
    if target == "PhiForCausalLM":
        out["lm_head.bias"] = head_b if head_b is not None else _zeros_like_bias(v)
    return {k: t.detach().to(torch.float32).contiguous().clone() for k, t in out.items()}


# ----------------------------------------------------------------------------------------------- import
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh"}


def _nonzero(tensors) -> bool:
    return any(bool(t.abs().max() > 0) for t in tensors if t is not None and t.numel())


def _rope(hf_cfg, target: str) -> tuple[float, float]:
    rp = dict(getattr(hf_cfg, "rope_parameters", None) or {})
    kind = rp.get("rope_type", "default")
    if kind != "default":
        raise UnsupportedArchitecture(f"{target} uses rope_type={kind!r} (scaled rotary); our model implements plain "
                                      f"rotary only, so the import is refused rather than approximated")
    factor = 1.0 if target in ("LlamaForCausalLM", "CohereForCausalLM") else rp.get("partial_rotary_factor", 1.0)
    return float(rp.get("rope_theta", 10000.0)), float(factor)


def from_hf_config(hf_cfg, sd: dict[str, torch.Tensor]) -> tuple[str, ModelConfig]:
    """(target, our ModelConfig) for a transformers config + its state dict; refuses what we cannot express."""
    target = MODEL_TYPES.get(getattr(hf_cfg, "model_type", None))
    if target is None:
        raise UnsupportedArchitecture(f"model_type {getattr(hf_cfg, 'model_type', None)!r} is not supported; "
                                      f"import handles {', '.join(MODEL_TYPES)}")
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
        if act not in HF_ACTIVATIONS:
            raise UnsupportedArchitecture(f"{target} with hidden_act={act!r}: we implement gelu and tanh-gelu only")
        kw.update(norm="layernorm", norm_eps=hf_cfg.layer_norm_eps, activation=HF_ACTIVATIONS[act])
        if target == "GPTNeoXForCausalLM":
            kw.update(block="parallel" if hf_cfg.use_parallel_residual else "sequential", parallel_shared_norm=False)
        else:
            if getattr(hf_cfg, "qk_layernorm", False):
                raise UnsupportedArchitecture("Phi with qk_layernorm=True: our attention has no q/k LayerNorm")
            kw.update(block="parallel", parallel_shared_norm=True)
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
            if scale is not None and float(scale) != 1.0:
                raise UnsupportedArchitecture(f"Cohere with logit_scale={scale}: our model has no logit scale "
                                              f"(folding it into the weights would not be exact with tied embeddings)")
            kw.update(norm="layernorm", norm_bias=False, norm_eps=hf_cfg.layer_norm_eps, block="parallel",
                      parallel_shared_norm=True)
    kw.update(_bias_flags(target, hf_cfg, sd))
    cfg = ModelConfig(**kw)
    try:
        cfg.validate()
    except ConfigError as exc:
        raise UnsupportedArchitecture(f"{target} config cannot be expressed: {exc}") from None
    recorded = _config_from_record(getattr(hf_cfg, "megatron_code", None), cfg, target)
    if recorded is not None:
        cfg = recorded
    return target, cfg


def _bias_flags(target: str, hf_cfg, sd) -> dict:
    """bias / norm_bias / output_bias from the tensors: a flag is on when its tensors exist and are not all zero
    (all-zero biases are exactly the same function as no bias), or when attention_bias says so."""
    biases = [t for k, t in sd.items() if k.endswith(".bias") and ".layers." in k and "norm" not in k]
    norm_biases = [t for k, t in sd.items() if k.endswith(".bias") and "norm" in k]
    out = {"bias": bool(getattr(hf_cfg, "attention_bias", False)) or _nonzero(biases)}
    if target in ("GPTNeoXForCausalLM", "PhiForCausalLM"):
        out["norm_bias"] = _nonzero(norm_biases)
    if target == "PhiForCausalLM":
        out["output_bias"] = _nonzero([sd.get("lm_head.bias")])
        out["tie_embeddings"] = bool(getattr(hf_cfg, "tie_word_embeddings", False)) and not out["output_bias"]
    return out


ARCH_PROPERTIES = ("num_layers", "hidden_size", "num_attention_heads", "kv_heads", "head_size", "ffn_size",
                   "vocab_size", "max_position_embeddings", "position_embedding", "rotary_size", "rotary_base",
                   "norm", "norm_eps", "activation", "block", "tie_embeddings")


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
    """The target's tensors -> our full state dict (padded vocab rows are zeros; missing biases are zeros)."""
    d, h, heads = cfg.head_size, cfg.hidden_size, cfg.num_attention_heads
    out: dict[str, torch.Tensor] = {}

    def take(key: str) -> torch.Tensor:
        if key not in sd:
            raise UnsupportedArchitecture(f"the {target} checkpoint has no tensor {key!r}: incomplete or not a "
                                          f"{target} checkpoint")
        return sd[key]

    def bias_of(key: str, rows: int) -> torch.Tensor:
        return sd[key] if key in sd else torch.zeros(rows)

    def norm(dst: str, src: str, with_bias: bool) -> None:
        out[f"{dst}.weight"] = take(f"{src}.weight")
        if with_bias:
            out[f"{dst}.bias"] = bias_of(f"{src}.bias", h)

    def linear(dst: str, src: str, with_bias: bool) -> None:
        w = take(f"{src}.weight")
        out[f"{dst}.weight"] = w
        if with_bias:
            out[f"{dst}.bias"] = bias_of(f"{src}.bias", w.shape[0])

    nb = cfg.norm_bias and cfg.norm == "layernorm"
    mlp = ("fc_in", "fc_out") if cfg.activation != "swiglu" else None
    for i in range(cfg.num_layers):
        s = f"layers.{i}"
        if target == "GPTNeoXForCausalLM":
            p = f"gpt_neox.layers.{i}"
            norm(f"{s}.norm1", f"{p}.input_layernorm", nb)
            norm(f"{s}.norm2", f"{p}.post_attention_layernorm", nb)
            qkv = take(f"{p}.attention.query_key_value.weight").reshape(heads, 3, d, h)
            qkv_b = bias_of(f"{p}.attention.query_key_value.bias", 3 * heads * d).reshape(heads, 3, d)
            for j, n in enumerate("qkv"):
                out[f"{s}.attn.{n}_proj.weight"] = qkv[:, j].reshape(heads * d, h)
                if cfg.bias:
                    out[f"{s}.attn.{n}_proj.bias"] = qkv_b[:, j].reshape(-1)
            linear(f"{s}.attn.o_proj", f"{p}.attention.dense", cfg.bias)
            linear(f"{s}.mlp.{mlp[0]}", f"{p}.mlp.dense_h_to_4h", cfg.bias)
            linear(f"{s}.mlp.{mlp[1]}", f"{p}.mlp.dense_4h_to_h", cfg.bias)
        elif target == "PhiForCausalLM":
            p = f"model.layers.{i}"
            norm(f"{s}.norm1", f"{p}.input_layernorm", nb)
            for n in "qkv":
                linear(f"{s}.attn.{n}_proj", f"{p}.self_attn.{n}_proj", cfg.bias)
            linear(f"{s}.attn.o_proj", f"{p}.self_attn.dense", cfg.bias)
            linear(f"{s}.mlp.fc_in", f"{p}.mlp.fc1", cfg.bias)
            linear(f"{s}.mlp.fc_out", f"{p}.mlp.fc2", cfg.bias)
        else:
            p = f"model.layers.{i}"
            norm(f"{s}.norm1", f"{p}.input_layernorm", False)
            if target == "LlamaForCausalLM":
                norm(f"{s}.norm2", f"{p}.post_attention_layernorm", False)
            for n in ("q", "k", "v", "o"):
                linear(f"{s}.attn.{n}_proj", f"{p}.self_attn.{n}_proj", cfg.bias)
            for n in ("gate", "up", "down"):
                linear(f"{s}.mlp.{n}_proj", f"{p}.mlp.{n}_proj", cfg.bias)
            if target == "CohereForCausalLM":
                for n in ("q", "k"):
                    key = f"{s}.attn.{n}_proj.weight"
                    out[key] = _permute_heads(out[key], d, inverse=True)
    if target == "GPTNeoXForCausalLM":
        embed = take("gpt_neox.embed_in.weight")
        norm("final_norm", "gpt_neox.final_layer_norm", nb)
    else:
        embed = take("model.embed_tokens.weight")
        norm("final_norm", "model.final_layernorm" if target == "PhiForCausalLM" else "model.norm", nb)
    out["embed.word.weight"] = _pad_rows(embed, cfg.padded_vocab_size)
    if not cfg.tie_embeddings:
        # a tied HF model whose head has a non-zero bias is imported untied (ours cannot tie with an output bias)
        head = sd["lm_head.weight"] if "lm_head.weight" in sd else embed
        out["lm_head.weight"] = _pad_rows(head, cfg.padded_vocab_size)
    if cfg.output_bias:
        out["lm_head.bias"] = _pad_rows(take("lm_head.bias"), cfg.padded_vocab_size)
    return {k: t.detach().to(torch.float32).contiguous().clone() for k, t in out.items()}


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """Append zero rows up to `rows` (the padded vocabulary)."""
    if t.shape[0] > rows:
        raise UnsupportedArchitecture(f"tensor has {t.shape[0]} vocabulary rows but the config says {rows}")
    pad = torch.zeros(rows - t.shape[0], *t.shape[1:], dtype=t.dtype)
    return torch.cat([t, pad], 0)
