"""Choosing the next token from logits: padded-vocab masking, temperature, top-k, top-p, greedy, and per-row
random generators.

Randomness is per row, not per batch: row (prompt i, sample s) draws from its own ``torch.Generator`` seeded from
``(seed, i, s)``. A sampled completion therefore depends only on the seed and its own prompt, never on which other
prompts shared its batch, the batch size, or rows that finished early and were dropped (batched == one by one).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from ..errors import UserError


class GenerationError(UserError, ValueError):
    """Generation settings or inputs a user can fix (the message says how)."""


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 means greedy (top_k/top_p ignored). top_k 0 and top_p 1.0 disable those filters."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def validate(self) -> None:
        if not self.temperature >= 0.0:
            raise GenerationError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise GenerationError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise GenerationError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def row_generator(seed: int, prompt_index: int, sample_index: int) -> torch.Generator:
    """Independent, reproducible stream for one (prompt, sample) row: the seed is a hash of the triple, so rows do
    not share or shift each other's random numbers."""
    digest = hashlib.sha256(f"{int(seed)}:{prompt_index}:{sample_index}".encode()).digest()
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return gen


def mask_padded_vocab(logits: torch.Tensor, vocab_size: int | None) -> torch.Tensor:
    """logits (..., padded_vocab) -> float32 copy with rows >= vocab_size set to -inf (padding is never sampled)."""
    logits = logits.float().clone()
    if vocab_size is not None and vocab_size < logits.shape[-1]:
        logits[..., vocab_size:] = float("-inf")
    return logits


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, then top-k, then top-p (the usual order). logits (B, V) float32 -> (B, V), removed = -inf."""
    logits = logits / params.temperature
    v = logits.shape[-1]
    if 0 < params.top_k < v:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Keep the smallest prefix whose mass reaches top_p: drop a token when the mass strictly before it already
        # does. The most likely token always survives (mass before it is 0 < top_p).
        before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = before >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def choose_next(logits: torch.Tensor, params: SamplingParams, vocab_size: int | None,
                generators: list[torch.Generator] | None) -> torch.Tensor:
    """logits (B, padded_vocab) of the last position -> next token ids (B,) int64.

    Greedy is argmax over the real vocabulary; otherwise row b samples with generators[b]."""
    logits = mask_padded_vocab(logits, vocab_size)
    if params.greedy:
        return logits.argmax(dim=-1)
    # Sampling happens on the CPU with CPU generators, so a seed gives the same stream on any device.
    probs = torch.softmax(filter_logits(logits, params), dim=-1).cpu()  # (B, V)
    if generators is None or len(generators) != probs.shape[0]:
        raise GenerationError("sampling needs one torch.Generator per row")
    out = [torch.multinomial(probs[b], 1, generator=generators[b]) for b in range(probs.shape[0])]
    return torch.cat(out).to(logits.device)


__all__ = ["GenerationError", "SamplingParams", "row_generator", "mask_padded_vocab", "filter_logits",
           "choose_next"]
