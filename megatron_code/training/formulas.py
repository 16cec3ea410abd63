"""The democratization study's hyperparameter rules, applied when a run asks for them (`--lr auto`,
`--lr-warmup-iters auto`, `--weight-decay auto`), each printed with its source and the numbers it used:

- learning rate: lr = 0.003239 - 0.0001395 ln N, N the non-embedding parameters (its fit over model sizes). For its
  own three shapes (Table 5.1) this gives 3.2e-4 / 1.1e-4 / 4.8e-5, while its Table 5.2 trained them at 3.0e-4 /
  1.6e-4 / 1.2e-4: the rule does not reproduce the study's own choices for the larger models (docs/recipes.md).
- warmup: 2 / (1 - beta2) steps (the horizon of Adam's second moment; 40 steps at beta2 = 0.95).
- weight decay: lambda = K sqrt(b / (N_tokens N_batches)), K ~ 5000 (a normalized weight decay in the manner of
  Loshchilov & Hutter, 2019). We read b as the tokens of one global batch (the final one under a batch schedule),
  N_tokens as the tokens of the whole run and N_batches as its optimizer steps; for a constant batch that is
  K / N_batches.

Not in config/: N needs the model built (on the meta device), which config/ may not import."""

from __future__ import annotations

import math

import torch

from ..config.base import ConfigError
from ..config.job import JobConfig
from ..config.model import ModelConfig
from ..model import GPT

LR_A, LR_B = 0.003239, 0.0001395  # the study's fit: lr = LR_A - LR_B ln N
SOURCE = "the democratization study's rules"


def non_embedding_parameters(cfg: ModelConfig) -> int:
    """Parameters outside the word/position embeddings and the output head (built on the meta device)."""
    with torch.device("meta"):
        model = GPT(ModelConfig(**{**cfg.to_dict(), "vocab_size": cfg.vocab_size or 128}))
    return sum(p.numel() for name, p in model.named_parameters()
               if not name.startswith(("embed.", "lm_head.")))


def study_lr(n_non_embedding: int) -> float:
    return LR_A - LR_B * math.log(n_non_embedding)


def study_warmup(beta2: float) -> int:
    return int(round(2.0 / (1.0 - beta2)))


def study_weight_decay(k: float, batch_tokens: int, run_tokens: int, steps: int) -> float:
    return k * math.sqrt(batch_tokens / (run_tokens * steps))


def apply_study_formulas(job: JobConfig) -> list[str]:
    """Fill the fields asked for as `auto` (needs the batch plan resolved: JobConfig.resolve_batch). Returns one
    line per value: what it is, the inputs and the source."""
    o, t = job.optim, job.training
    notes = []
    if o.lr_auto:
        n = non_embedding_parameters(job.model)
        o.lr = study_lr(n)
        notes.append(f"--lr auto = {o.lr:.4e} = {LR_A} - {LR_B} ln N with N = {n:,} non-embedding parameters "
                     f"({SOURCE})")
        if o.lr <= 0:
            raise ConfigError(f"--lr auto gives {o.lr:.3e} <= 0 for N = {n:,} (the rule holds below ~1.2e10 "
                             f"non-embedding parameters): give --lr explicitly")
        if o.min_lr > o.lr:
            raise ConfigError(f"--min-lr ({o.min_lr:g}) exceeds --lr auto ({o.lr:.3e}): lower --min-lr")
    if o.lr_warmup_auto:
        o.lr_warmup_iters = study_warmup(o.adam_beta2)
        o.lr_warmup_fraction = o.lr_warmup_samples = o.lr_warmup_tokens = None
        notes.append(f"--lr-warmup-iters auto = {o.lr_warmup_iters} = 2 / (1 - beta2) with beta2 = {o.adam_beta2} "
                     f"({SOURCE})")
    planned = t.global_batch_size or t.rampup_batch_size or t.step_batch_size_schedule or t.batch_size_schedule
    if o.weight_decay_auto and not planned:
        notes.append("--weight-decay auto: computed at launch, once the global batch (micro batch x data-parallel "
                     "size) is known; give --global-batch-size to see it here")
    elif o.weight_decay_auto:
        seq = job.data.seq_length
        batch_tokens = t.global_batch_size * seq
        run_tokens = job.batch_schedule().samples_through(t.train_iters) * seq
        o.weight_decay = study_weight_decay(o.weight_decay_k, batch_tokens, run_tokens, t.train_iters)
        notes.append(f"--weight-decay auto = {o.weight_decay:.4e} = K sqrt(b / (N_tokens N_batches)) with K = "
                     f"{o.weight_decay_k:g}, b = {batch_tokens:,} tokens per batch, N_tokens = {run_tokens:,}, "
                     f"N_batches = {t.train_iters:,} ({SOURCE})")
    return notes
