"""The loss reported under Megatron's names: TensorBoard/W&B ``lm loss`` and ``lm loss validation``, and the
``lm loss:`` field of the Megatron-style log line.

What Megatron-LM core_v0.16.1 reports (read in its source, independent of --calculate-per-token-loss):

* ``pretrain_gpt.loss_func`` returns, besides the loss to back-propagate, the pair (sum of the micro batch's
  masked token losses, its number of non-masked tokens) as ``{'lm loss': ...}``. ``schedules.forward_step_calc_loss``
  divides only the back-propagated loss by the token count and the number of micro batches when the flag is off;
  the pair is never touched.
* ``training.train_step`` sums the pairs over the step's micro batches, all-reduces them over the data-parallel
  group and divides once: the training ``lm loss`` is the token mean of the whole global batch.
* ``training.evaluate`` adds the pairs over every validation iteration (all-reduced over DP) and divides once at
  the end: ``lm loss validation`` is the token mean of all validation tokens.
* The log line averages the per-iteration values over the logging window (``training_log``).

Megatron-DeepSpeed (main; what a ``--deepspeed`` line's dashboards were made with, --training.tensorboard_style
megatron-deepspeed) reports otherwise: its ``pretrain_gpt.loss_func`` logs each micro batch's masked *mean*
averaged over DP, ``train_step`` averages those over the micro batches, and ``evaluate`` divides their sum by
eval_iters x micro batches (DeepSpeed's pipeline: eval_batch's mean). That is the mean of micro-batch means, which
``ReportedLoss(token_mean=False)`` gives.

``--eod-mask-loss`` and padding change the masks, hence both the sums and the counts. Our back-propagated loss is
unchanged by any of this; ``ReportedLoss`` only adds up what the trainer already computed. The loss the engine
averages (mean of per-micro-batch means without the flag) stays our own ``loss`` (metrics.jsonl, ``train/loss``).

Two choices of ours: the ``lm loss`` leaves out the z-loss term (--z-loss; Megatron's own auxiliary losses, e.g. the
MoE z-loss, are logged beside ``lm loss``, never inside it), and MIM training, whose loss adds two directions'
means and an agreement term, reports the mean of its per-micro-batch losses (there is no token count that
weighs it; MIM is not Megatron's). A step with no scored token at all reports 0 (Megatron would divide 0 by 0).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class ReportedLoss:
    """Adds up (masked token-loss sum, token count) of the micro batches a rank computes the loss of, then gives
    sum / count after one all-reduce. Ranks that compute no loss (pipeline stages before the last) add nothing;
    tensor-parallel ranks that each hold the same loss multiply sum and count alike, which leaves the ratio."""

    def __init__(self, device, token_mean: bool = True):
        self.device, self.token_mean = device, token_mean  # False: Megatron-DeepSpeed's mean of micro-batch means
        self.reset()

    def reset(self) -> None:
        self.total = torch.zeros(2, dtype=torch.float64, device=self.device)

    def add(self, loss: torch.Tensor, mask: torch.Tensor, token_scale: float | None, z_part: float = 0.0,
            token_weighted: bool = True) -> None:
        """One micro batch: ``loss`` as back-propagated -- its masked token mean, or (``token_scale``, per-token
        loss) its masked sum times the scale --, ``z_part`` the z-loss included in it, ``mask`` its loss mask.
        ``token_weighted`` False (MIM training): the loss itself, weight 1."""
        value = loss.detach().to(self.total) - z_part
        if not (token_weighted and self.token_mean):
            count = torch.ones((), dtype=torch.float64, device=self.device)
        else:
            count = mask.detach().to(self.total).sum()
            if token_scale is None:
                value = value * count  # mean -> sum
            else:  # sum * scale -> sum (scale 0: no token in the global batch, nothing to add)
                value = value / token_scale if token_scale else torch.zeros_like(value)
        self.total += torch.stack([value.reshape(()), count])

    def value(self, reduce: bool, group=None, extra: list[torch.Tensor] | None = None) -> list[float]:
        """[sum / count, *extra] after one all-reduce (sum) of [sum, count, *extra] over ``group`` (None: every
        rank) when ``reduce``; 0 for an empty count."""
        both = torch.cat([self.total, *(e.detach().to(self.total).reshape(1) for e in extra or ())])
        if reduce:
            dist.all_reduce(both, group=group)
        s, n = float(both[0]), float(both[1])
        return [s / n if n > 0 else 0.0, *(float(x) for x in both[2:])]
