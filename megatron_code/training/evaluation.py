"""The validation loss (Trainer.evaluate): the first ``eval_iters`` global batches of a dataset, the same ones every
time.

Default: the mean of the per-batch losses (each a masked token mean), averaged over data-parallel ranks.

With --calculate-per-token-loss, as Megatron-LM's ``evaluate()`` (megatron/training/training.py) does: every
micro batch contributes the *sum* of its token losses and its number of non-masked tokens; both are summed over
all validation iterations and data-parallel ranks and divided once at the end. Batches with more scored tokens
then weigh more, exactly as in the training loss of that flag (training/losses.per_token_scale)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..parallel.pipeline import PipelineBatches
from .data import make_loader
from .objective import Collate


@torch.no_grad()
def evaluate(trainer, dataset) -> float:
    trainer.engine.eval()
    loader = make_loader(dataset, trainer.job, 0, trainer.groups.dp_rank, trainer.groups.dp_size,
                         Collate(trainer.objective, train=False))
    per_token = trainer.job.training.calculate_per_token_loss
    # validation losses are masked sums (scale 1) under per-token loss, masked means otherwise (losses._masked_mean)
    trainer.eval_token_scale = 1.0 if per_token else None
    try:
        if trainer.pipelined:
            return _evaluate_pipeline(trainer, loader, per_token)
        total, n = torch.zeros((), device=trainer.engine.device), 0
        tokens = torch.zeros((), dtype=torch.float64, device=trainer.engine.device)
        for i, batch in enumerate(loader):
            if i >= trainer.job.training.eval_iters * trainer.grad_accum:
                break
            total += trainer._loss(batch, train=False)[0].float()
            tokens += batch["loss_mask"].sum().to(tokens)
            n += 1
    finally:
        trainer.eval_token_scale = None
        trainer.engine.train()
    if per_token:
        return _token_mean(trainer, total.double(), tokens)
    mean = total / max(n, 1)
    if trainer.groups.dp_size > 1:
        dist.all_reduce(mean, group=trainer.groups.dp_group)
        mean = mean / trainer.groups.dp_size
    return float(mean)


def _token_mean(trainer, loss_sum: torch.Tensor, tokens: torch.Tensor) -> float:
    """sum / count after summing both over the data-parallel ranks (0 when no token was scored, as the masked mean
    of an empty mask is)."""
    both = torch.stack([loss_sum.to(tokens), tokens])
    if trainer.groups.dp_size > 1:
        dist.all_reduce(both, group=trainer.groups.dp_group)
    return float(both[0] / both[1]) if float(both[1]) > 0 else 0.0


def _evaluate_pipeline(trainer, loader, per_token: bool) -> float:
    """eval_batch returns the loss averaged over the micro batches and the DP ranks on every stage. Under per-token
    loss each micro-batch loss is a masked sum, so that average times accumulation x DP is the global batch's sum;
    every stage reads its own loader's micro batches ahead to count their tokens (first and last stage read the
    same ones)."""
    engine, accum, dp = trainer.engine, trainer.grad_accum, trainer.groups.dp_size
    it = iter(loader)
    n = min(trainer.job.training.eval_iters, len(loader) // accum)
    tokens = torch.zeros((), dtype=torch.float64, device=engine.device)
    # Stages size their receive buffers from the first activation they see; validation batches may have
    # another shape (MIM trains on doubled batches), so renegotiate shapes on the way in and out.
    engine.reset_activation_shape()
    total = 0.0
    for _ in range(n):
        source = it
        if per_token:
            micro = [next(it) for _ in range(accum)]
            tokens += sum(float(b["loss_mask"].sum()) for b in micro)
            source = iter(micro)
        # batches of the final global batch size even while a batch schedule runs a smaller one
        total += float(engine.eval_batch(PipelineBatches(source, trainer.objective.label_keys(False)),
                                         num_micro_batches=accum))
    engine.reset_activation_shape()
    if per_token:
        return _token_mean(trainer, torch.tensor(total * accum * dp, dtype=torch.float64), tokens)
    return total / max(n, 1)
