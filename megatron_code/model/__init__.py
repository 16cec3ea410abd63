"""Single-device GPT model (no torch.distributed, deepspeed or parallel imports here: a test enforces it)."""

from .gpt import GPT, KVCache, count_parameters, flops_per_token

__all__ = ["GPT", "KVCache", "count_parameters", "flops_per_token"]
