"""The GPT decoder, written for one device. It knows nothing about distribution: tensor/pipeline parallelism and
ZeRO are applied from outside (megatron_code.parallel) using the stable module names below.

Module names: embed.word, embed.position (learned positions only), layers.{i}.{norm1,norm2,attn.{q,k,v,o}_proj,
mlp.{fc_in,fc_out | gate_proj,up_proj,down_proj},parallel_reduce}, final_norm, lm_head (untied only).

Build on any device, including `meta` (`with torch.device("meta"): GPT(cfg)`) to count or plan a 540B model
without memory; call `init_weights()` to draw parameters (it is separate from __init__ on purpose).
"""

from __future__ import annotations


import torch
from torch import nn

from ..config.model import ModelConfig
from ..kernels import linear_cross_entropy
from .attention import LayerKVCache
from .block import Block
from .init import init_gpt_weights
from .norm import build_norm
from .rope import rotary_cos_sin


def head_logits(head: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """hidden (B, T, H) -> logits (B, T, V) through `head` (GPT.head(): a Linear, or the tied word embedding)."""
    return head(hidden) if isinstance(head, nn.Linear) else torch.nn.functional.linear(hidden, head.weight)


def head_loss(head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor,
              loss_weights: torch.Tensor, z_loss: float = 0.0):
    """sum(loss_weights * CE(head_logits(head, hidden), labels)) from the fused head + loss kernel; hidden (B, T, H),
    labels and loss_weights (B, T). A tensor-parallel head (swapped in from outside) holds a slice of the
    vocabulary and says so (`vocab_shard()`); the loss is then the whole-vocabulary loss on every rank.
    With ``z_loss`` > 0 (PaLM's z-loss, added per token as z_loss * logsumexp^2): ``(loss, detached z part)``."""
    shard = head.vocab_shard() if hasattr(head, "vocab_shard") else None
    return linear_cross_entropy(hidden.flatten(0, 1), head.weight, getattr(head, "bias", None), labels.flatten(),
                                loss_weights.flatten(), vocab_shard=shard, z_loss=z_loss, return_z=z_loss > 0)


class ScaleOutput:
    """Forward hook: the module's output times a constant. On the final norm it scales the logits by the same
    constant (the head is linear): PaLM's 1/sqrt(d) pre-softmax scaling for its shared embedding."""

    def __init__(self, scale: float):
        self.scale = scale

    def __call__(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        return output * self.scale


class Embedding(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.word = nn.Embedding(cfg.padded_vocab_size, cfg.hidden_size)
        if cfg.position_embedding == "learned":
            self.position = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.embedding_dropout)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        x = self.word(input_ids)  # (B, T, hidden)
        if hasattr(self, "position"):
            x = x + self.position(position_ids)
        return self.dropout(x)


class KVCache:
    """One LayerKVCache per layer plus the shared length; created by GPT.new_cache."""

    def __init__(self, layers: list[LayerKVCache]):
        self.layers = layers

    @property
    def length(self) -> int:
        return self.layers[0].length

    def reorder(self, index: torch.Tensor) -> None:
        for layer in self.layers:
            layer.reorder(index)


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        if cfg.tie_embeddings and cfg.output_bias:
            from ..config.base import ConfigError
            raise ConfigError("model.output_bias needs an untied head: set --untie-embeddings-and-output-weights")
        self.cfg = cfg
        self.embed = Embedding(cfg)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.final_norm = build_norm(cfg)
        if cfg.output_logit_scaling:  # on the module, so the pipeline's final-norm stage carries it too
            self.final_norm.register_forward_hook(ScaleOutput(cfg.hidden_size ** -0.5))
        if not cfg.tie_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.padded_vocab_size, bias=cfg.output_bias)

    # ------------------------------------------------------------------ pieces (also used by the pipeline)
    def default_position_ids(self, input_ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        t = input_ids.shape[1]
        return torch.arange(start, start + t, device=input_ids.device).unsqueeze(0).expand(input_ids.shape[0], t)

    def rope(self, position_ids: torch.Tensor, dtype: torch.dtype):
        if self.cfg.position_embedding != "rope":
            return None
        return rotary_cos_sin(position_ids, self.cfg.rotary_dims, self.cfg.rotary_base, dtype)

    def output_weight(self) -> torch.Tensor:
        return self.embed.word.weight if self.cfg.tie_embeddings else self.lm_head.weight

    def head(self) -> nn.Module:
        """The module whose weight maps hidden states to logits: lm_head, or the word embedding when tied."""
        return self.embed.word if self.cfg.tie_embeddings else self.lm_head

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (B, T, hidden) after the final norm -> (B, T, padded_vocab)."""
        return head_logits(self.head(), hidden)

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                cache: KVCache | None = None, mask: torch.Tensor | None = None,
                return_hidden: bool = False, labels: torch.Tensor | None = None,
                loss_weights: torch.Tensor | None = None, z_loss: float = 0.0, hidden_only: bool = False):
        """input_ids (B, T) -> logits (B, T, padded_vocab) [, final hidden (B, T, hidden)]; with ``hidden_only``
        the final hidden states alone (a caller that needs logits at a few positions applies ``self.logits``).

        With a cache, positions continue from the cached length and keys/values are appended.

        With ``labels`` (B, T) and ``loss_weights`` (B, T) float, returns instead the 0-dim float32 loss
        ``sum(loss_weights * CE(logits, labels))`` from the fused head + cross-entropy kernel, which keeps no
        float32 copy of the (B, T, V) logits and nothing of that size for backward (pass
        ``loss_mask / loss_mask.sum()`` for the masked mean). With a vocabulary-sharded (tensor-parallel) head
        the loss is the whole-vocabulary loss on every rank of its group. With ``z_loss`` > 0 the loss adds
        ``z_loss * logsumexp(logits)^2`` per token (same weights) and the return is ``(loss, detached z part)``."""
        if position_ids is None:
            position_ids = self.default_position_ids(input_ids, cache.length if cache is not None else 0)
        x = self.embed(input_ids, position_ids)
        rope = self.rope(position_ids, x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, rope, cache.layers[i] if cache is not None else None, mask)
        hidden = self.final_norm(x)
        if hidden_only:
            return hidden
        if labels is not None:
            if loss_weights is None or labels.shape != input_ids.shape or loss_weights.shape != input_ids.shape:
                raise ValueError("labels and loss_weights must both be given, shaped like input_ids (B, T)")
            return head_loss(self.head(), hidden, labels, loss_weights, z_loss)  # (loss, z part) with z_loss
        logits = self.logits(hidden)
        return (logits, hidden) if return_hidden else logits

    # ------------------------------------------------------------------ utilities
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        init_gpt_weights(self, self.cfg, generator)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        p = self.embed.word.weight
        layers = []
        for layer in self.layers:
            kv_out = layer.attn.k_proj.out_features
            layers.append(LayerKVCache(batch, kv_out // self.cfg.head_dim, max_len, self.cfg.head_dim,
                                       p.dtype, p.device))
        return KVCache(layers)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def count_parameters(cfg: ModelConfig) -> int:
    """Exact parameter count from a meta-device build (no memory used)."""
    with torch.device("meta"):
        model = GPT(cfg)
    return model.num_parameters()


def flops_per_token(cfg: ModelConfig, seq_length: int) -> float:
    """Training FLOPs per token: 6 x (matmul parameters) + 12 x layers x (heads x head_dim) x seq (attention scores
    and values, forward + backward), the PaLM paper's formula (Chowdhery et al., 2022, appendix B). Matmul
    parameters exclude the embedding lookups but include the output projection (tied or not)."""
    n = count_parameters(cfg) - cfg.padded_vocab_size * cfg.hidden_size  # minus the word-embedding lookup
    if cfg.position_embedding == "learned":
        n -= cfg.max_position_embeddings * cfg.hidden_size
    if cfg.tie_embeddings:
        n += cfg.padded_vocab_size * cfg.hidden_size  # the logits matmul reuses the embedding (untied: lm_head)
    attn = 12 * cfg.num_layers * cfg.num_attention_heads * cfg.head_dim * seq_length
    return 6.0 * n + attn


__all__ = ["GPT", "KVCache", "count_parameters", "flops_per_token"]
