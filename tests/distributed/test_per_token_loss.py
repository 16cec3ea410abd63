"""--calculate-per-token-loss (Megatron-LM's semantics): the training loss is the sum of token losses over the whole
global batch -- every micro batch and every data-parallel rank -- divided by the global number of non-masked tokens.

By hand: the per-micro-batch losses the trainer back-propagates, averaged as the engine averages them (over
accumulation steps and DP ranks), equal sum(nll * mask) / sum(mask) over the global batch, on a batch whose masks are
unequal. Through the trainer: a run with one micro batch holding the whole global batch computes exactly that token
mean (its masked mean), so DP2 x accumulation 2 and PP2 x accumulation 4 (each fused and unfused) with the flag must
give its loss trajectory; without the flag, DP2 x accumulation 2 (mean of per-micro-batch means) must not. Masks are
unequal because NullTokenizer's EOD (vocab - 1) is frequent in the 8-token mock vocabulary and --eod-mask-loss drops
those targets."""

from __future__ import annotations

import pytest
import torch

from megatron_code.testing import run_distributed
from megatron_code.training.losses import causal_lm_loss, masked_mean_weights, per_token_scale

LINE = ["--preset", "tiny", "--model.num_layers", "2", "--model.hidden_size", "32", "--model.num_attention_heads", "4",
        "--model.ffn_hidden_size", "64", "--seq-length", "16", "--mock-data", "--tokenizer-type", "NullTokenizer",
        "--vocab-size", "8", "--eod-mask-loss", "--global-batch-size", "8", "--hidden-dropout", "0",
        "--attention-dropout", "0", "--log-interval", "100", "--training.progress_bar", "false", "--eval-interval",
        "0", "--train-iters", "3", "--lr", "5e-3"]


def test_per_token_scale_gives_the_global_token_mean_by_hand():
    g = torch.Generator().manual_seed(0)
    dp, accum, B, S, V = 2, 2, 2, 5, 11
    logits = torch.randn(dp, accum, B, S, V, generator=g)
    labels = torch.randint(0, V, (dp, accum, B, S), generator=g)
    mask = (torch.rand(dp, accum, B, S, generator=g) < 0.6).float()
    mask[0, 1] = 0.0  # one micro batch with no scored token at all
    mask[1, 0, 0] = 1.0
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 3), labels.flatten(), reduction="none")
    want = (nll * mask.flatten()).sum() / mask.sum()  # the token mean over the whole global batch
    scale = per_token_scale(float(mask.sum()), accum, dp)
    per_micro = torch.stack([causal_lm_loss(logits[r, m], labels[r, m], mask[r, m], token_scale=scale)
                             for r in range(dp) for m in range(accum)])
    assert torch.allclose(per_micro.mean(), want, rtol=1e-6)  # what the engine averages (accumulation, then DP)
    # the fused path's weights give the same micro-batch values
    for i, (r, m) in enumerate((r, m) for r in range(dp) for m in range(accum)):
        lp = torch.log_softmax(logits[r, m], -1).gather(-1, labels[r, m].unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(-(lp * masked_mean_weights(mask[r, m], scale)).sum(), per_micro[i], rtol=1e-6)
    # the mean of per-micro-batch means (the default) is a different number on these unequal masks
    default = torch.stack([causal_lm_loss(logits[r, m], labels[r, m], mask[r, m])
                           for r in range(dp) for m in range(accum)]).mean()
    assert abs(float(default - want)) > 1e-3
    assert per_token_scale(0.0, accum, dp) == 0.0


def _train(rank, world, jobs):
    """jobs: [(key, extra flags)] trained one after another in this group -> {key: (losses, fused loss path)}."""
    import contextlib
    import os

    from megatron_code.config.cli import parse_args
    from megatron_code.training.trainer import Trainer

    out = {}
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        for key, extra in jobs:
            trainer = Trainer(parse_args(LINE + extra).job)
            out[key] = ([loss for _, loss in trainer.train()["train_loss"]], trainer.loss_path.fused)
    return out


def _close(got, want, what):
    assert len(got) == len(want) == 3, (what, got, want)
    for a, b in zip(got, want):
        assert abs(a - b) <= 1e-5 * abs(b), (what, got, want)


@pytest.mark.distributed
def test_dp2_accumulation_and_pp2_follow_the_global_token_mean():
    ref = run_distributed(_train, 1, [("ref", ["--micro-batch-size", "8"])], timeout=900)[0]["ref"][0]
    out = run_distributed(_train, 2, [
        ("dp2-fused", ["--micro-batch-size", "2", "--calculate-per-token-loss"]),
        ("dp2-unfused", ["--micro-batch-size", "2", "--calculate-per-token-loss", "--training.fused_lm_loss", "false"]),
        ("dp2-mean-of-means", ["--micro-batch-size", "2"]),
        ("pp2", ["--micro-batch-size", "2", "--calculate-per-token-loss", "--pipeline-model-parallel-size", "2"]),
        ("pp2-unfused", ["--micro-batch-size", "2", "--calculate-per-token-loss", "--pipeline-model-parallel-size",
                         "2", "--training.fused_lm_loss", "false"]),
    ], timeout=1500)[0]
    for key in ("dp2-fused", "dp2-unfused", "pp2", "pp2-unfused"):
        _close(out[key][0], ref, key)
    assert out["dp2-fused"][1] and not out["dp2-unfused"][1] and not out["pp2-unfused"][1]
    default = out["dp2-mean-of-means"][0]
    assert abs(default[0] - ref[0]) > 1e-4 * abs(ref[0]), (default, ref)  # the masks really are unequal
