"""megatron_code's GPT decoder for transformers (exported with ``trust_remote_code``): the same function as
megatron_code.model.GPT for every layout it accepts, with the same module names, so the tensors are ours unchanged.

Layouts: learned / rotary (half-split, partial) / T5 relative bias / no positions; LayerNorm (with or without bias) or RMSNorm (fp32);
GELU (exact or tanh), ReLU, ELU or SwiGLU; optional 1/sqrt(hidden) logit scaling; sequential or parallel block
(one shared norm or two); MHA/GQA/MQA with any head size; biases on or off; tied or untied head, optional output
bias. Attention: softmax(q k^T / sqrt(head_dim)), causal, through torch's scaled_dot_product_attention.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_megatron_code import MegatronCodeConfig


class _Arch:
    """The ModelConfig record with its derived sizes (the same rules as megatron_code.config.model)."""

    def __init__(self, rec):
        self.__dict__.update(rec)
        self.heads = rec["num_attention_heads"]
        self.kv_heads = rec.get("num_kv_heads") or self.heads
        self.head_size = rec.get("head_dim") or rec["hidden_size"] // self.heads
        self.ffn_size = rec.get("ffn_hidden_size") or 4 * rec["hidden_size"]
        m = rec.get("vocab_pad_multiple", 1)
        self.padded_vocab = int(math.ceil(rec["vocab_size"] / m) * m) if m > 1 else rec["vocab_size"]
        if rec["position_embedding"] != "rope":
            self.rotary = 0
        elif rec.get("rotary_dims") is not None:
            self.rotary = rec["rotary_dims"]
        else:
            self.rotary = int(self.head_size * rec.get("rotary_percent", 1.0))


class _RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


def _norm(a):
    if a.norm == "rmsnorm":
        return _RMSNorm(a.hidden_size, a.norm_eps)
    return nn.LayerNorm(a.hidden_size, eps=a.norm_eps, bias=a.norm_bias)


def _t5_bucket(relative, buckets, max_distance):
    """T5's unidirectional bucket of key - query (Raffel et al., 2020): distance n = max(query - key, 0) has its own
    bucket below buckets / 2, then log-spaced buckets up to max_distance, then the last one."""
    n = (-relative).clamp(min=0)
    exact = buckets // 2
    large = exact + (torch.log(n.float().clamp(min=1) / exact) / math.log(max_distance / exact)
                     * (buckets - exact)).long()
    return torch.where(n < exact, n, large.clamp(max=buckets - 1))


def _rotate(x, cos, sin, r):
    """Half-split rotary on the first r dims of x (B, H, T, D); cos/sin (1 or B, 1, T, r)."""
    xr, rest = x[..., :r], x[..., r:]
    x1, x2 = xr[..., : r // 2], xr[..., r // 2:]
    rotated = torch.cat((-x2, x1), dim=-1)
    return torch.cat((xr * cos + rotated * sin, rest), dim=-1)


class _Attention(nn.Module):
    def __init__(self, a, layer_idx):
        super().__init__()
        self.a, self.layer_idx = a, layer_idx
        q_out, kv_out = a.heads * a.head_size, a.kv_heads * a.head_size
        self.q_proj = nn.Linear(a.hidden_size, q_out, bias=a.bias)
        self.k_proj = nn.Linear(a.hidden_size, kv_out, bias=a.bias)
        self.v_proj = nn.Linear(a.hidden_size, kv_out, bias=a.bias)
        self.o_proj = nn.Linear(q_out, a.hidden_size, bias=a.bias)
        if a.position_embedding == "t5":  # one learned scalar per head and distance bucket, per layer
            self.rel_bias = nn.Embedding(a.t5_buckets, a.heads)

    def forward(self, x, rope, mask, cache):
        b, t, _ = x.shape
        d = self.a.head_size
        q = self.q_proj(x).view(b, t, -1, d).transpose(1, 2)
        k = self.k_proj(x).view(b, t, -1, d).transpose(1, 2)
        v = self.v_proj(x).view(b, t, -1, d).transpose(1, 2)
        if rope is not None:
            q, k = _rotate(q, *rope, self.a.rotary), _rotate(k, *rope, self.a.rotary)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        rep = q.shape[1] // k.shape[1]
        if rep > 1:
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        drop = self.a.attention_dropout if self.training else 0.0
        if hasattr(self, "rel_bias"):  # T5 bias of (key j - query i), queries being the last t of the keys
            tk, t = k.shape[2], q.shape[2]
            rel = torch.arange(tk, device=x.device)[None, :] - torch.arange(tk - t, tk, device=x.device)[:, None]
            bias = self.rel_bias(_t5_bucket(rel, self.a.t5_buckets, self.a.t5_max_distance)).permute(2, 0, 1)[None]
            mask = torch.zeros_like(bias, dtype=q.dtype).masked_fill(~mask, float("-inf")) + bias.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class _MLP(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.swiglu = a.activation == "swiglu"
        if self.swiglu:
            self.gate_proj = nn.Linear(a.hidden_size, a.ffn_size, bias=a.bias)
            self.up_proj = nn.Linear(a.hidden_size, a.ffn_size, bias=a.bias)
            self.down_proj = nn.Linear(a.ffn_size, a.hidden_size, bias=a.bias)
        else:
            self.act = {"gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "relu": F.relu,
                        "elu": F.elu}[a.activation]  # ELU with alpha 1
            self.fc_in = nn.Linear(a.hidden_size, a.ffn_size, bias=a.bias)
            self.fc_out = nn.Linear(a.ffn_size, a.hidden_size, bias=a.bias)

    def forward(self, x):
        if self.swiglu:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return self.fc_out(self.act(self.fc_in(x)))


class _Block(nn.Module):
    def __init__(self, a, layer_idx):
        super().__init__()
        self.parallel = a.block == "parallel"
        self.norm1 = _norm(a)
        if not (self.parallel and a.parallel_shared_norm):
            self.norm2 = _norm(a)
        self.attn = _Attention(a, layer_idx)
        self.mlp = _MLP(a)
        self.dropout = nn.Dropout(a.hidden_dropout)

    def forward(self, x, rope, mask, cache):
        if not self.parallel:
            x = x + self.dropout(self.attn(self.norm1(x), rope, mask, cache))
            return x + self.dropout(self.mlp(self.norm2(x)))
        n1 = self.norm1(x)
        n2 = self.norm2(x) if hasattr(self, "norm2") else n1
        return x + self.dropout(self.attn(n1, rope, mask, cache) + self.mlp(n2))


class _Embedding(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.word = nn.Embedding(a.vocab_size, a.hidden_size)
        if a.position_embedding == "learned":
            self.position = nn.Embedding(a.max_position_embeddings, a.hidden_size)
        self.dropout = nn.Dropout(a.embedding_dropout)


class MegatronCodePreTrainedModel(PreTrainedModel):
    config_class = MegatronCodeConfig
    base_model_prefix = ""
    _supports_sdpa = True

    def _init_weights(self, module):  # weights always come from the checkpoint; keep shapes valid when not
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.a.init_std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)


class MegatronCodeForCausalLM(MegatronCodePreTrainedModel, GenerationMixin):
    def __init__(self, config):
        super().__init__(config)
        a = self.a = _Arch(config.megatron_code)
        a.vocab_size = config.vocab_size  # the export writes the true vocabulary rows only
        self.embed = _Embedding(a)
        self.layers = nn.ModuleList(_Block(a, i) for i in range(a.num_layers))
        self.final_norm = _norm(a)
        if not a.tie_embeddings:
            self.lm_head = nn.Linear(a.hidden_size, a.vocab_size, bias=a.output_bias)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed.word

    def set_input_embeddings(self, value):
        self.embed.word = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, past_key_values=None,
                use_cache=None, inputs_embeds=None, labels=None, logits_to_keep=0, **kwargs):
        a = self.a
        cache = cache if cache is not None else past_key_values
        if use_cache is None:
            use_cache = self.config.use_cache
        if use_cache and cache is None:
            cache = DynamicCache()
        past = cache.get_seq_length() if cache is not None else 0
        x = self.embed.word(input_ids) if inputs_embeds is None else inputs_embeds
        b, t = x.shape[:2]
        if position_ids is None:
            if attention_mask is not None:  # left padding: positions count the real tokens only
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -t:]
            else:
                position_ids = torch.arange(past, past + t, device=x.device).unsqueeze(0).expand(b, t)
        if a.position_embedding == "learned":
            x = x + self.embed.position(position_ids)
        x = self.embed.dropout(x)
        rope = None
        if a.rotary:
            r = a.rotary
            inv = 1.0 / (a.rotary_base ** (torch.arange(0, r, 2, dtype=torch.float32, device=x.device) / r))
            ang = position_ids.float()[..., None] * inv
            ang = torch.cat((ang, ang), dim=-1)[:, None]  # (B, 1, T, r)
            rope = (ang.cos().to(x.dtype), ang.sin().to(x.dtype))
        # causal mask over [past tokens, these tokens] (True = attend), plus the padding mask when given
        keys = past + t
        mask = torch.ones(t, keys, dtype=torch.bool, device=x.device).tril(diagonal=past)[None, None]
        if attention_mask is not None:
            mask = mask & attention_mask[:, None, None, -keys:].bool()
            mask = mask | ~mask.any(-1, keepdim=True)  # an all-padding query row attends anywhere (its output unused)
        for layer in self.layers:
            x = layer(x, rope, mask, cache)
        hidden = self.final_norm(x)
        if a.__dict__.get("output_logit_scaling"):  # PaLM's 1/sqrt(d) on the logits, applied before the head
            hidden = hidden * a.hidden_size ** -0.5
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden) if not a.tie_embeddings else F.linear(hidden, self.embed.word.weight)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache if use_cache else None)
