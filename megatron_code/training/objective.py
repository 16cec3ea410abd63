"""Training objectives as seen by the trainer: how samples are transformed, batched and scored.

causal: next-token loss. fim: samples transformed by FIM (data/objectives/fim.py), next-token loss with <fim_pad>
targets masked. mim: every sample read twice in one batch (l2r and reversed r2l, data/objectives/mim.py), loss
= fwd CE + bwd CE + beta x agreement (training/losses.py). Validation is always left-to-right next-token loss
(for MIM the forward direction only, its sentinel-only first position masked), so objectives compare fairly.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config.base import ConfigError
from ..config.job import JobConfig
from ..data.batch import make_batch
from ..data.objectives.dataset import FIMDataset
from ..data.objectives.fim import FIMConfig, fim_ids
from ..data.objectives.mim import mim_batch, mim_forward_batch, split_directions
from .losses import causal_lm_loss, mim_loss, z_loss_term


class Objective:
    def __init__(self, job: JobConfig, tokenizer):
        self.job = job
        self.kind = job.objective.objective
        self.tokenizer = tokenizer
        self.eod = tokenizer.eod if tokenizer is not None else -1
        if self.kind in ("fim", "mim") and tokenizer is None:
            raise ConfigError(f"the {self.kind} objective needs a tokenizer with its sentinels "
                              f"(--tokenizer-type/--tokenizer-model)")
        if self.kind == "fim":
            o = job.objective
            if o.fim_mode != "sample":
                raise ConfigError("objective.fim_mode 'document' applies FIM before packing, at tokenization: run "
                                  "tools/preprocess_data.py --fim-rate R [--fim-spm-rate S] and train on its output "
                                  "without --fim-rate")
            self.fim_cfg = FIMConfig(rate=o.fim_rate, spm_rate=o.fim_spm_rate, fragment_rate=o.fim_fragment_rate,
                                     split_token=o.fim_split_token, mode="sample")
            self.pad = fim_ids(tokenizer, o.fim_split_token).pad
        if self.kind == "mim":
            special = tokenizer.special_tokens
            missing = [s for s in ("<l2r>", "<r2l>") if s not in special]
            if missing:
                raise ConfigError(f"MIM needs the {', '.join(missing)} sentinel(s) in the tokenizer: train it with "
                                  f"tools/train_tokenizer.py (registers them) and re-tokenize the data")
            self.l2r, self.r2l = special["<l2r>"], special["<r2l>"]
            self.pad = tokenizer.pad

    def wrap_train(self, dataset):
        if self.kind == "fim" and dataset is not None:
            return FIMDataset(dataset, self.fim_cfg, self.tokenizer, self.job.training.seed)
        return dataset

    def collate(self, items: list[dict], train: bool) -> dict:
        tokens = torch.from_numpy(np.stack([np.asarray(it["tokens"], dtype=np.int64) for it in items]))
        masks = None
        if "loss_mask" in items[0]:
            masks = torch.from_numpy(np.stack([np.asarray(it["loss_mask"], dtype=np.float32) for it in items]))
        if self.kind == "mim":
            if train:
                return mim_batch(tokens, masks, self.l2r, self.r2l, self.pad, self.eod)
            batch = mim_forward_batch(tokens, masks, self.l2r, self.pad)
            batch["loss_mask"][:, 0] = 0.0  # t_0 from the sentinel alone has no causal counterpart
            return batch
        d = self.job.data
        batch = make_batch(tokens, self.eod, d.eod_mask_loss, d.reset_position_ids, d.reset_attention_mask)
        if masks is not None:
            batch["loss_mask"] = batch["loss_mask"] * masks[:, 1:]  # per-token mask -> mask over targets
        return batch

    def next_token_loss(self, train: bool) -> bool:
        """True when `loss` is the masked-mean next-token cross-entropy (everything but MIM training), so the
        trainer may compute it with the fused head + loss kernel from the model instead."""
        return not (self.kind == "mim" and train)

    def loss(self, logits: torch.Tensor, batch: dict, tp_group, train: bool):
        """(scalar loss, {name: float} parts for logging)."""
        if self.kind == "mim" and train:
            o = self.job.objective
            fwd, bwd = split_directions(logits, batch)
            total, parts = mim_loss(fwd, bwd, batch, o.mim_beta, o.mim_divergence, o.mim_stop_grad, tp_group)
            return total, {k: float(v) for k, v in parts.items()}
        loss = causal_lm_loss(logits, batch["labels"], batch["loss_mask"], tp_group)
        z = self.job.training.z_loss
        if train and z:  # training only: validation stays the plain next-token loss, comparable across runs
            term = z_loss_term(logits, batch["loss_mask"], z, tp_group)
            return loss + term, {"z_loss": float(term)}
        return loss, {}


class Collate:
    """Picklable collate function for DataLoader workers."""

    def __init__(self, objective: Objective, train: bool):
        self.objective, self.train = objective, train

    def __call__(self, items: list[dict]) -> dict:
        return self.objective.collate(items, self.train)
