"""The validation loss (Trainer.evaluate): the first ``eval_iters`` global batches of a dataset, the same ones every
time. Returns two numbers:

* Megatron-LM's ``lm loss validation`` (its ``evaluate()``, megatron/training/training.py): every micro batch
  contributes the sum of its token losses and its number of non-masked tokens; both are summed over all validation
  iterations and data-parallel ranks and divided once at the end, with or without --calculate-per-token-loss
  (training/reported_loss.py). Batches with more scored tokens weigh more.
* our own ``loss`` (metrics.jsonl, ``valid/loss``, the history): that same token mean with
  --calculate-per-token-loss; without it the mean of the per-batch losses (each a masked token mean), averaged
  over data-parallel ranks, as every recorded result (RESULTS.md) was computed.

Validation micro batches always compute masked means (the back-propagated form without the flag); the token sums
are recovered as mean x count, which differs from summing the token losses directly only by rounding."""

from __future__ import annotations

import torch

from ..parallel.pipeline import PipelineBatches
from .data import make_loader
from .objective import Collate


@torch.no_grad()
def evaluate(trainer, dataset) -> tuple[float, float]:
    """(our validation loss, Megatron's `lm loss validation`)."""
    trainer.engine.eval()
    loader = make_loader(dataset, trainer.job, 0, trainer.groups.dp_rank, trainer.groups.dp_size,
                         Collate(trainer.objective, train=False))
    trainer.report.reset()
    try:
        if trainer.pipelined:
            mean = _evaluate_pipeline(trainer, loader)
            lm = trainer.report.value(True)[0]  # last stage's DP ranks -> every rank
        else:
            total, n = torch.zeros((), device=trainer.engine.device), 0
            for i, batch in enumerate(loader):
                if i >= trainer.job.training.eval_iters * trainer.grad_accum:
                    break
                total += trainer._loss(batch, train=False)[0].float()
                n += 1
            dp = trainer.groups.dp_size
            lm, mean = trainer.report.value(dp > 1, trainer.groups.dp_group, [total / max(n, 1)])  # one all-reduce
            mean /= dp
    finally:
        trainer.engine.train()
    return (lm if trainer.job.training.calculate_per_token_loss else mean), lm


def _evaluate_pipeline(trainer, loader) -> float:
    """The mean of eval_batch's results, each averaged over the micro batches and the DP ranks on every stage; the
    last stage's loss function adds each micro batch to `trainer.report` on the way."""
    engine, accum = trainer.engine, trainer.grad_accum
    it = iter(loader)
    n = min(trainer.job.training.eval_iters, len(loader) // accum)
    # Stages size their receive buffers from the first activation they see; validation batches may have
    # another shape (MIM trains on doubled batches), so renegotiate shapes on the way in and out.
    engine.reset_activation_shape()
    total = 0.0
    for _ in range(n):
        # batches of the final global batch size even while a batch schedule runs a smaller one
        total += float(engine.eval_batch(PipelineBatches(it, trainer.objective.label_keys(False)),
                                         num_micro_batches=accum))
    engine.reset_activation_shape()
    return total / max(n, 1)
