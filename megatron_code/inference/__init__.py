"""Inference: batched generation with a KV cache (greedy / temperature / top-k / top-p, stop strings, n samples),
contrastive search, and loading a checkpoint for generation."""

from .contrastive import contrastive_search, contrastive_search_reference
from .generate import generate, generate_ids, load_for_inference
from .sampling import GenerationError, SamplingParams
from .stopping import HUMANEVAL_STOPS, truncate_at_stop

__all__ = ["generate", "generate_ids", "load_for_inference", "contrastive_search", "contrastive_search_reference",
           "GenerationError", "SamplingParams", "HUMANEVAL_STOPS", "truncate_at_stop"]
