"""Blending several datasets with Megatron's ``--data-path w1 p1 w2 p2`` syntax (FORMATS.md section 3).

The interleave is greedy and deterministic, so the first n samples of a blend of size N > n equal the blend of
size n: extending a run keeps every sample already seen.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import UserError
from .helpers import IndexCache, build_blending_indices

BLEND_SURPLUS = 1.005  # each dataset is asked for 0.5% more samples than its share (Megatron's margin)


class BlendError(UserError, ValueError):
    pass


def parse_data_path(data_path) -> tuple[list[float] | None, list[str]]:
    """``["0.3", "A", "0.7", "B"]`` -> ([0.3, 0.7], ["A", "B"]); ``["A", "B"]`` -> (None, ["A", "B"]).
    Entries holding spaces (``["0.3 A 0.7 B"]``) are split first. Weights are returned unnormalized."""
    if isinstance(data_path, str):
        data_path = [data_path]
    items = [tok for entry in data_path for tok in str(entry).split()]
    if not items:
        raise BlendError("empty data path: give at least one dataset prefix")

    def is_number(s):
        try:
            float(s)
            return True
        except ValueError:
            return False

    numeric = [is_number(s) for s in items]
    if not any(numeric):
        return None, items
    if len(items) % 2 or not all(numeric[0::2]) or any(numeric[1::2]):
        raise BlendError(f"weights do not match paths in data path {' '.join(items)!r}: use either "
                         f"'PREFIX PREFIX ...' or 'WEIGHT PREFIX WEIGHT PREFIX ...'")
    weights = [float(s) for s in items[0::2]]
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise BlendError(f"blend weights must be non-negative and not all zero, got {weights}")
    return weights, items[1::2]


def normalize_weights(weights) -> list[float]:
    total = float(sum(weights))
    if total <= 0:
        raise BlendError(f"blend weights must not all be zero: {list(weights)}")
    return [float(w) / total for w in weights]


def samples_per_dataset(weights, num_samples: int) -> list[int]:
    """Samples each dataset must provide for a blend of ``num_samples`` (0.5% surplus, rounded up)."""
    return [int(math.ceil(num_samples * w * BLEND_SURPLUS)) for w in weights]


class BlendedDataset:
    """Interleaves ``datasets`` by normalized ``weights``; item ``i`` is
    ``datasets[dataset_index[i]][dataset_sample_index[i]]`` (same item contract as GPTDataset).

    ``size=None`` means: the longest blend every dataset can serve without repeating past its length.
    """

    def __init__(self, datasets, weights, size: int | None, cache: IndexCache | None = None,
                 description: dict | None = None, names=None):
        if len(datasets) != len(weights):
            raise BlendError(f"weights do not match datasets: {len(weights)} weights for {len(datasets)} datasets")
        self.datasets = list(datasets)
        self.weights = normalize_weights(weights)
        names = list(names) if names is not None else [f"dataset {d}" for d in range(len(datasets))]
        lens = [len(d) for d in self.datasets]
        truncate = size is None
        total = sum(lens) if truncate else int(size)
        desc = {"class": "BlendedDataset", "weights": self.weights, "size": total, "components": description or {}}

        def build():
            ds_index, ds_sample = build_blending_indices(np.asarray(self.weights), total)
            return {"dataset_index": ds_index, "dataset_sample_index": ds_sample}

        arrays = (cache or IndexCache(None)).get_or_build(desc, build)
        ds_index, ds_sample = arrays["dataset_index"], arrays["dataset_sample_index"]
        limit = total
        for d, n in enumerate(lens):  # first blend position that would read past the end of dataset d
            over = np.flatnonzero((ds_index == d) & (ds_sample >= n))
            if not over.size:
                continue
            if not truncate:
                raise BlendError(f"the blend asks {names[d]} for more samples than it can give: it has {n} but "
                                 f"blend position {int(over[0])} needs its sample {int(ds_sample[over[0]])}; ask "
                                 f"for fewer samples or build that dataset for more")
            limit = min(limit, int(over[0]))
        self.dataset_index = ds_index[:limit]
        self.dataset_sample_index = ds_sample[:limit]

    def __len__(self) -> int:
        return int(self.dataset_index.size)

    def __getitem__(self, i: int) -> dict:
        d = int(self.dataset_index[i])
        item = self.datasets[d][int(self.dataset_sample_index[i])]
        return item

    def epoch_of(self, i: int) -> int:
        """Epoch of the underlying dataset that blend sample ``i`` comes from."""
        return self.datasets[int(self.dataset_index[i])].epoch_of(int(self.dataset_sample_index[i]))

    def source_of(self, i: int) -> tuple[int, int]:
        """(dataset number, sample index inside that dataset) of blend sample ``i``."""
        return int(self.dataset_index[i]), int(self.dataset_sample_index[i])
