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
EVAL = ["--eval-interval", "3", "--eval-iters", "2"]  # validation at iterations 0 and 3


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
    """jobs: [(key, extra flags)] trained one after another in this group -> {key: (losses, fused loss path,
    validation losses)}."""
    import contextlib
    import os

    from megatron_code.config.cli import parse_args
    from megatron_code.training.trainer import Trainer

    out = {}
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        for key, extra in jobs:
            trainer = Trainer(parse_args(LINE + extra).job)
            history = trainer.train()
            out[key] = ([loss for _, loss in history["train_loss"]], trainer.loss_path.fused,
                        [loss for _, loss in history["valid_loss"]])
    return out


def _close(got, want, what):
    assert len(got) == len(want) == 3, (what, got, want)
    for a, b in zip(got, want):
        assert abs(a - b) <= 1e-5 * abs(b), (what, got, want)


@pytest.mark.distributed
def test_dp2_accumulation_and_pp2_follow_the_global_token_mean():
    # validation (Megatron-LM's evaluate(): total token-loss sum / total token count over its iterations and DP
    # ranks) is checked across layouts too: DP2 and PP2 must report the single-process value
    ref_out = run_distributed(_train, 1, [
        ("ref", ["--micro-batch-size", "8"]),
        ("ref-valid", ["--micro-batch-size", "8", "--calculate-per-token-loss"] + EVAL)], timeout=900)[0]
    ref = ref_out["ref"][0]
    out = run_distributed(_train, 2, [
        ("dp2-fused", ["--micro-batch-size", "2", "--calculate-per-token-loss"] + EVAL),
        ("dp2-unfused", ["--micro-batch-size", "2", "--calculate-per-token-loss", "--training.fused_lm_loss", "false"]),
        ("dp2-mean-of-means", ["--micro-batch-size", "2"]),
        ("pp2", ["--micro-batch-size", "2", "--calculate-per-token-loss", "--pipeline-model-parallel-size", "2"]
         + EVAL),
        ("pp2-unfused", ["--micro-batch-size", "2", "--calculate-per-token-loss", "--pipeline-model-parallel-size",
                         "2", "--training.fused_lm_loss", "false"]),
    ], timeout=1500)[0]
    for key in ("dp2-fused", "dp2-unfused", "pp2", "pp2-unfused"):
        _close(out[key][0], ref, key)
    assert out["dp2-fused"][1] and not out["dp2-unfused"][1] and not out["pp2-unfused"][1]
    default = out["dp2-mean-of-means"][0]
    assert abs(default[0] - ref[0]) > 1e-4 * abs(ref[0]), (default, ref)  # the masks really are unequal
    want = ref_out["ref-valid"][2]
    assert len(want) == 2, want  # at iteration 0 and at the end
    for key in ("dp2-fused", "pp2"):
        assert all(abs(a - b) <= 1e-5 * b for a, b in zip(out[key][2], want)) and len(out[key][2]) == 2, (key, out)


def _validate(rank, world):
    """One trained step, then the validation loss (Trainer.evaluate) with and without the flag, and by hand from
    the model's own logits over the same validation micro batches."""
    import contextlib
    import os

    from megatron_code.config.cli import parse_args
    from megatron_code.training.data import make_loader
    from megatron_code.training.objective import Collate
    from megatron_code.training.trainer import Trainer

    line = LINE + ["--micro-batch-size", "2", "--global-batch-size", "2", "--train-iters", "1", "--eval-interval",
                   "1000", "--eval-iters", "4", "--calculate-per-token-loss"]
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        trainer = Trainer(parse_args(line).job)
        trainer.train()
        per_token = trainer.evaluate(trainer.data.valid)
        trainer.job.training.calculate_per_token_loss = False
        default = trainer.evaluate(trainer.data.valid)
    sums, counts = [], []
    trainer.engine.eval()
    with torch.no_grad():
        loader = make_loader(trainer.data.valid, trainer.job, 0, 0, 1, Collate(trainer.objective, train=False))
        for i, b in zip(range(4), loader):
            logits = trainer.engine(b["input_ids"], b["position_ids"], mask=b.get("attention_mask")).float()
            nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), b["labels"].flatten(), reduction="none")
            sums.append(float((nll * b["loss_mask"].flatten()).sum()))
            counts.append(float(b["loss_mask"].sum()))
    return per_token, default, sums, counts


@pytest.mark.distributed
def test_validation_is_total_token_sum_over_total_token_count():
    """Megatron-LM's evaluate(): with --calculate-per-token-loss the validation loss is the sum of token losses over
    all validation iterations divided by their total token count, not the mean of the per-batch means."""
    per_token, default, sums, counts = run_distributed(_validate, 1, timeout=900)[0]
    assert len(set(counts)) > 1, counts  # unequal numbers of scored tokens (EOD targets masked)
    by_hand = sum(sums) / sum(counts)
    mean_of_means = sum(s / c for s, c in zip(sums, counts)) / len(sums)
    assert abs(per_token - by_hand) <= 1e-5 * by_hand, (per_token, by_hand)
    assert abs(default - mean_of_means) <= 1e-5 * mean_of_means, (default, mean_of_means)  # the default is unchanged
    assert abs(by_hand - mean_of_means) > 1e-4 * by_hand, (by_hand, mean_of_means)  # and the two really differ
