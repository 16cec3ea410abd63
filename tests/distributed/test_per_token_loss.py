"""--calculate-per-token-loss (Megatron-LM's semantics): the training loss is the sum of token losses over the whole
global batch -- every micro batch and every data-parallel rank -- divided by the global number of non-masked tokens.

By hand: the per-micro-batch losses the trainer back-propagates, averaged as the engine averages them (over
accumulation steps and DP ranks), equal sum(nll * mask) / sum(mask) over the global batch, on a batch whose masks are
unequal. Through the trainer: a run with one micro batch holding the whole global batch computes exactly that token
mean (its masked mean), so DP2 x accumulation 2 and PP2 x accumulation 4 (each fused and unfused) with the flag must
give its loss trajectory; without the flag, DP2 x accumulation 2 (mean of per-micro-batch means) must not. Masks are
unequal because NullTokenizer's EOD (vocab - 1) is frequent in the 8-token mock vocabulary and --eod-mask-loss drops
those targets.

Megatron-LM's reported values (`lm loss`, `lm loss validation`: token means over the global batch / all validation
tokens, with or without the flag; training/reported_loss.py) are checked on every one of those layouts, and with
TP2 and TP2 x PP2 x DP2; Megatron-DeepSpeed's names (--training.tensorboard_style megatron-deepspeed) carry its own
mean of micro-batch means."""

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
    validation losses, Megatron's `lm loss` per iteration, its `lm loss validation`)}; the last two as handed to
    TensorBoard/W&B (MetricsSink.megatron, seen on every rank before rank 0's sink writes them)."""
    import contextlib
    import os

    from megatron_code.config.cli import parse_args
    from megatron_code.training.trainer import Trainer

    out = {}
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        for key, extra in jobs:
            trainer = Trainer(parse_args(LINE + extra).job)
            lm = {False: [], True: []}
            write = trainer.sink.megatron

            def megatron(iteration, samples, tokens, scalars, validation=False, write=write, lm=lm):
                if "lm loss" in scalars:
                    lm[validation].append(scalars["lm loss"])
                return write(iteration, samples, tokens, scalars, validation)

            trainer.sink.megatron = megatron
            history = trainer.train()
            out[key] = ([loss for _, loss in history["train_loss"]], trainer.loss_path.fused,
                        [loss for _, loss in history["valid_loss"]], lm[False], lm[True])
    return out


def _close(got, want, what):
    assert len(got) == len(want) == 3, (what, got, want)
    for a, b in zip(got, want):
        assert abs(a - b) <= 1e-5 * abs(b), (what, got, want)


def _same(got, want, what):
    assert len(got) == len(want) > 0, (what, got, want)
    for a, b in zip(got, want):
        assert abs(a - b) <= 1e-5 * abs(b), (what, got, want)


@pytest.mark.distributed
def test_dp2_accumulation_and_pp2_follow_the_global_token_mean():
    """Training and validation, with and without the flag, on the flat (fused and unfused) and pipeline (fused and
    unfused) paths, with TP, and with TP2 x PP2 x DP2 (8 processes, ~8 s): every run reports what one process
    holding the whole global batch in one micro batch reports. Megatron-LM's `lm loss` (TensorBoard/W&B/log line) is
    the global batch's token mean and `lm loss validation` the token mean of all validation tokens whether or not
    the flag is set; our own `loss` is the mean of the micro-batch means without the flag, and so are Megatron-
    DeepSpeed's `lm loss` and `lm loss validation` (training/reported_loss.py)."""
    # micro batch = global batch: its masked mean is the global token mean, so the flag changes nothing here
    ref_run = run_distributed(_train, 1, [
        ("ref", ["--micro-batch-size", "8", "--calculate-per-token-loss"] + EVAL)], timeout=900)[0]["ref"]
    ref, ref_valid = ref_run[0], ref_run[2]
    assert len(ref_valid) == 2, ref_valid  # at iteration 0 and at the end
    _same(ref_run[3], ref, "ref lm loss")
    _same(ref_run[4], ref_valid, "ref lm loss validation")
    flag = ["--micro-batch-size", "2", "--calculate-per-token-loss"] + EVAL
    unfused, pp2 = ["--training.fused_lm_loss", "false"], ["--pipeline-model-parallel-size", "2"]
    out = run_distributed(_train, 2, [
        ("dp2-fused", flag),
        ("dp2-unfused", flag + unfused),
        ("dp2-mean-of-means", ["--micro-batch-size", "2", "--z-loss", "1e-2"] + EVAL),
        ("pp2-mean-of-means", ["--micro-batch-size", "2", "--z-loss", "1e-2"] + pp2 + EVAL),
        ("dp2-deepspeed-style", ["--micro-batch-size", "2", "--training.tensorboard_style", "megatron-deepspeed"]
         + EVAL),
        ("pp2", flag + pp2),
        ("pp2-unfused", flag + pp2 + unfused),
        ("tp2", flag + ["--tensor-model-parallel-size", "2", "--micro-batch-size", "4"]),
    ], timeout=1500)[0]
    # TP x PP x DP at once: the last stage's two TP ranks each hold the loss, stage 0 (rank 0, which logs) none
    out.update(run_distributed(_train, 8, [("tp2-pp2-dp2", flag + pp2 + ["--tensor-model-parallel-size", "2"])],
                               timeout=1500)[0])
    for key in ("dp2-fused", "dp2-unfused", "pp2", "pp2-unfused", "tp2", "tp2-pp2-dp2"):
        losses, _, valid, lm, lm_valid = out[key]
        _close(losses, ref, key)
        _close(lm, ref, f"{key} lm loss")
        _same(valid, ref_valid, f"{key} validation")
        _same(lm_valid, ref_valid, f"{key} lm loss validation")
    assert out["dp2-fused"][1] and not out["dp2-unfused"][1] and not out["pp2-unfused"][1]
    # without the flag: our loss is the mean of the micro-batch means (with the z-loss term in it), a different
    # number on these unequal masks; Megatron's lm loss of the first step (same weights, same global batch) and
    # validation at iteration 0 are still the global token means, of the cross-entropy alone
    for key in ("dp2-mean-of-means", "pp2-mean-of-means"):
        losses, _, valid, lm, lm_valid = out[key]
        assert abs(losses[0] - ref[0]) > 1e-4 * abs(ref[0]), (key, losses, ref)
        assert abs(valid[0] - ref_valid[0]) > 1e-5 * abs(ref_valid[0]), (key, valid, ref_valid)  # no z-loss there
        _same(lm[:1], ref[:1], f"{key} lm loss")
        _same(lm_valid[:1], ref_valid[:1], f"{key} lm loss validation")
    # Megatron-DeepSpeed's names (a --deepspeed line) carry its own meaning: the mean of the micro-batch means
    losses, _, valid, lm, lm_valid = out["dp2-deepspeed-style"]
    assert abs(losses[0] - ref[0]) > 1e-4 * abs(ref[0]), (losses, ref)
    _close(lm, losses, "Megatron-DeepSpeed lm loss")
    _same(lm_valid, valid, "Megatron-DeepSpeed lm loss validation")


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
        lm = [trainer.lm_valid]  # Megatron's `lm loss validation`
        trainer.job.training.calculate_per_token_loss = False
        default = trainer.evaluate(trainer.data.valid)
        lm.append(trainer.lm_valid)
    sums, counts = [], []
    trainer.engine.eval()
    with torch.no_grad():
        loader = make_loader(trainer.data.valid, trainer.job, 0, 0, 1, Collate(trainer.objective, train=False))
        for i, b in zip(range(4), loader):
            logits = trainer.engine(b["input_ids"], b["position_ids"], mask=b.get("attention_mask")).float()
            nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), b["labels"].flatten(), reduction="none")
            sums.append(float((nll * b["loss_mask"].flatten()).sum()))
            counts.append(float(b["loss_mask"].sum()))
    return per_token, default, sums, counts, lm


@pytest.mark.distributed
def test_validation_is_total_token_sum_over_total_token_count():
    """Megatron-LM's evaluate(): with --calculate-per-token-loss the validation loss is the sum of token losses over
    all validation iterations divided by their total token count, not the mean of the per-batch means; Megatron's
    `lm loss validation` is that token mean with or without the flag."""
    per_token, default, sums, counts, lm = run_distributed(_validate, 1, timeout=900)[0]
    assert len(set(counts)) > 1, counts  # unequal numbers of scored tokens (EOD targets masked)
    by_hand = sum(sums) / sum(counts)
    mean_of_means = sum(s / c for s, c in zip(sums, counts)) / len(sums)
    assert abs(per_token - by_hand) <= 1e-5 * by_hand, (per_token, by_hand)
    assert abs(default - mean_of_means) <= 1e-5 * mean_of_means, (default, mean_of_means)  # the default is unchanged
    assert abs(by_hand - mean_of_means) > 1e-4 * by_hand, (by_hand, mean_of_means)  # and the two really differ
    assert all(abs(v - by_hand) <= 1e-5 * by_hand for v in lm), (lm, by_hand)


def test_reported_loss_recovers_token_sums_from_every_loss_form():
    """ReportedLoss by hand: a masked mean (x count), a per-token scaled sum (/ scale), a validation mean; the z-loss
    part is left out; MIM's loss counts once per micro batch; nothing scored reports 0 (no division by zero)."""
    from megatron_code.training.reported_loss import ReportedLoss

    g = torch.Generator().manual_seed(1)
    nll, mask = torch.rand(3, 4, 6, generator=g), (torch.rand(3, 4, 6, generator=g) < 0.5).float()
    mask[1] = 0.0  # a micro batch with no scored token
    want = float((nll * mask).sum() / mask.sum())
    means = [(n * m).sum() / m.sum().clamp(min=1.0) for n, m in zip(nll, mask)]
    report = ReportedLoss("cpu")
    for mean, m in zip(means, mask):
        report.add(mean + 0.25, m, None, z_part=0.25)
    assert report.value(False) == [pytest.approx(want, rel=1e-6)]
    scale = per_token_scale(float(mask.sum()), 3, 1)
    report.reset()
    for n, m in zip(nll, mask):
        report.add((n * m).sum() * scale, m, scale)  # the form losses._masked_mean gives under the flag
    assert report.value(False, extra=[torch.tensor(2.0)]) == [pytest.approx(want, rel=1e-6), 2.0]
    report.reset()
    report.add(torch.tensor(3.0), mask[0], None, token_weighted=False)
    report.add(torch.tensor(5.0), mask[1], None, token_weighted=False)
    assert report.value(False) == [4.0]
    report.reset()
    report.add(torch.tensor(0.0), mask[1], None)
    report.add(torch.tensor(0.0), mask[1], 0.0)
    assert report.value(False) == [0.0]
