"""Data sources, tokenizer and training objective."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from .base import ConfigBase, ConfigError, check_ranges

TOKENIZER_TYPES = ("GPT2BPETokenizer", "HuggingFaceTokenizer", "SentencePieceTokenizer", "NullTokenizer",
                   "TikTokenizer")
OBJECTIVES = ("causal", "fim", "mim")


@dataclass
class DataConfig(ConfigBase):
    # Megatron syntax: ["0.3", "A", "0.7", "B"] or ["A", "B"]; prefixes of .bin/.idx pairs.
    data_path: list[str] = field(default_factory=list)
    train_data_path: list[str] = field(default_factory=list)
    valid_data_path: list[str] = field(default_factory=list)
    test_data_path: list[str] = field(default_factory=list)
    split: str = "969,30,1"
    seq_length: int = 1024
    data_cache_path: Optional[str] = None
    eod_mask_loss: bool = False
    reset_position_ids: bool = False
    # Megatron's --reset-attention-mask: a token attends only to earlier tokens of its own packed document (the
    # one that ended with the previous EOD input), not across EOD boundaries. Costs a (B, 1, S, S) mask per batch.
    reset_attention_mask: bool = False
    num_workers: int = 0
    # Order of training samples (Megatron's --dataloader-type): "single" in order from consumed_samples (our GPT
    # datasets are already shuffled), "cyclic" endless epochs each in a random order seeded by the epoch number;
    # data_sharding (cyclic): each DP rank shuffles within its own contiguous share (Megatron's default).
    dataloader_type: str = "single"
    data_sharding: bool = True
    # Deterministic random tokens instead of a corpus (Megatron's --mock-data): parity tests and benchmarks.
    mock_data: bool = False
    tokenizer_type: Optional[str] = None
    tokenizer_model: Optional[str] = None
    vocab_file: Optional[str] = None
    merge_file: Optional[str] = None
    # TikTokenizer (Megatron-LM's --tiktoken-pattern v1|v2, --tiktoken-num-special-tokens; its vocabulary is capped
    # at model.vocab_size, Megatron's --vocab-size, 2^17 when unset).
    tiktoken_pattern: Optional[str] = None
    tiktoken_num_special_tokens: Optional[int] = None

    @property
    def has_data(self) -> bool:
        return bool(self.data_path or self.train_data_path or self.mock_data)

    def validate(self) -> None:
        if self.seq_length <= 0:
            raise ConfigError("--seq-length must be positive")
        if self.tokenizer_type is not None and self.tokenizer_type not in TOKENIZER_TYPES:
            raise ConfigError(f"--tokenizer-type must be one of {TOKENIZER_TYPES}, got '{self.tokenizer_type}'")
        if self.dataloader_type not in ("single", "cyclic"):
            raise ConfigError(f"--dataloader-type must be single or cyclic, got '{self.dataloader_type}'")
        if self.data_path and self.train_data_path:
            raise ConfigError("give either --data-path (split by --split) or --train-data-path, not both")
        try:
            parts = [float(x) for x in self.split.replace("/", ",").split(",")]
        except ValueError:
            raise ConfigError(f"--split must look like 969,30,1, got '{self.split}'") from None
        if not parts or any(p < 0 for p in parts) or sum(parts) <= 0:
            raise ConfigError(f"--split weights must be non-negative and not all zero, got '{self.split}'")
        check_ranges("data", {"num_workers": (0, None)}, self)
        for flag, items in (("data-path", self.data_path), ("train-data-path", self.train_data_path),
                            ("valid-data-path", self.valid_data_path), ("test-data-path", self.test_data_path)):
            _check_blend_weights(flag, items)


def _check_blend_weights(flag: str, items: list[str]) -> None:
    """Megatron's weighted form "W1 PREFIX1 W2 PREFIX2 ...": every weight a finite positive number. A zero weight
    would build a dataset that is never sampled (and, at 0 samples, an index that cannot be built): leave the
    prefix out instead."""
    if len(items) < 2 or len(items) % 2:
        return
    try:
        weights = [float(w) for w in items[0::2]]
    except ValueError:
        return  # not the weighted form: plain prefixes
    for w, prefix in zip(weights, items[1::2]):
        if not math.isfinite(w) or w <= 0:
            raise ConfigError(f"--{flag}: blend weight {w:g} for {prefix} must be a positive number; to leave "
                              f"{prefix} out of the blend, remove it from --{flag}")


@dataclass
class ObjectiveConfig(ConfigBase):
    objective: str = "causal"
    fim_rate: float = 0.5
    fim_spm_rate: float = 0.5
    fim_fragment_rate: Optional[float] = None
    fim_split_token: Optional[str] = None
    fim_mode: str = "sample"
    mim_beta: float = 1.0
    mim_divergence: str = "tv"
    mim_stop_grad: Optional[str] = None

    def validate(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {OBJECTIVES}, got '{self.objective}'")
        for name in ("fim_rate", "fim_spm_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1]")
        if self.mim_divergence not in ("tv", "js", "kl", "rkl", "l2"):
            raise ConfigError(f"--mim-divergence must be tv, js, kl, rkl or l2, got '{self.mim_divergence}'")
        check_ranges("objective", {"fim_fragment_rate": (0, 1), "mim_beta": (0, None)}, self)
        if self.fim_mode not in ("sample", "document"):
            raise ConfigError("objective.fim_mode must be 'sample' or 'document'")
