"""Per-sample random generators: the only source of randomness for training objectives.

Objectives (FIM, future augmentations) are pure functions of ``(tokens, rng, cfg)``. The generator is derived from
``(seed, epoch, sample_index)`` alone, never from worker id, call order or a global RNG, so a sample is transformed
identically whichever data-loader worker builds it, in whatever order, and after a resume.
"""

from __future__ import annotations

import numpy as np

__all__ = ["sample_rng"]


def _check(name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"sample_rng: {name} must be an integer, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"sample_rng: {name} must be >= 0 (got {value}); use a non-negative --seed")
    return int(value)


def sample_rng(seed: int, epoch: int, sample_index: int, stream: int = 0) -> np.random.Generator:
    """A fresh ``np.random.Generator`` determined only by ``(seed, epoch, sample_index, stream)``.

    ``stream`` separates independent uses of the same sample (e.g. 0 = objective, 1 = another augmentation) so
    they never share draws. SeedSequence hashes the whole tuple, so neighbouring indices give unrelated streams.
    """
    entropy = [_check("seed", seed), _check("epoch", epoch), _check("sample_index", sample_index),
               _check("stream", stream)]
    return np.random.default_rng(np.random.SeedSequence(entropy))
