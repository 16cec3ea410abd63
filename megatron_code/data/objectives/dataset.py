"""Dataset wrappers that apply a per-sample objective transform with rng = f(seed, epoch, sample index), so the
result is the same in any worker and any order, and a resumed run sees exactly the same transformed samples."""

from __future__ import annotations

import numpy as np

from .fim import FIMConfig, apply_fim
from .rng import sample_rng


class FIMDataset:
    """Sample-level FIM over a packed dataset: item i -> {"tokens" (S+1,), "loss_mask" (S+1,) float32}."""

    def __init__(self, dataset, cfg: FIMConfig, tokenizer, seed: int):
        self.dataset, self.cfg, self.tokenizer, self.seed = dataset, cfg, tokenizer, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def epoch_of(self, i: int) -> int:
        return self.dataset.epoch_of(i) if hasattr(self.dataset, "epoch_of") else 0

    def __getitem__(self, i: int) -> dict:
        tokens = np.asarray(self.dataset[i]["tokens"])
        rng = sample_rng(self.seed, self.epoch_of(i), int(i))
        out, mask = apply_fim(tokens, rng, self.cfg, self.tokenizer)
        return {"tokens": out.astype(np.int64), "loss_mask": mask}
