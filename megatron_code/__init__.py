"""megatron_code: a readable Megatron/DeepSpeed-style trainer for code language models."""

__version__ = "0.1.0"
