"""Batch-size schedules (config/batch_schedule.py) and the LR schedule's progress in samples, checked step by step
against Megatron-LM's definitions, restated here from its source (not imported: Megatron is not a dependency).

- ramp-up: RampupBatchsizeNumMicroBatchesCalculator.update and training.update_train_iters (Megatron-LM before
  commit 532ad926, April 2026, which replaced it by the step schedule);
- step schedule: StepBatchsizeNumMicroBatchesCalculator (current Megatron-LM);
- LR: OptimizerParamScheduler.get_lr, which counts samples (num_steps += current global batch per step)."""

import math

import pytest

from megatron_code.config.base import ConfigError
from megatron_code.config.batch_schedule import build_schedule
from megatron_code.config.cli import parse_args
from megatron_code.config.optim import OptimConfig
from megatron_code.training.lr_schedule import lr_at


def megatron_rampup_batch(consumed, start, incr, ramp_samples, final):
    if consumed > ramp_samples:
        return final
    per_increment = ramp_samples / ((final - start) // incr)
    return start + int(consumed / per_increment) * incr


def megatron_rampup_train_iters(train_samples, start, incr, ramp_samples, final):
    iterations = consumed = 0
    while consumed <= ramp_samples and consumed <= train_samples:
        consumed += megatron_rampup_batch(consumed, start, incr, ramp_samples, final)
        iterations += 1
    return iterations + (train_samples - consumed) // final


def megatron_step_batch(consumed, schedule):
    batch = schedule[0][1]
    for threshold, bs in schedule:
        if consumed >= threshold:
            batch = bs
        else:
            break
    return batch


@pytest.mark.parametrize("start, incr, ramp, final", [(16, 16, 5_859_375 // 1000, 1536), (4, 4, 1000, 64),
                                                       (32, 8, 777, 128), (8, 8, 1, 64), (3, 5, 101, 48)])
def test_rampup_batch_at_every_step_is_megatrons(start, incr, ramp, final):
    sched = build_schedule(final, [start, incr, ramp], None, None, seq_length=128)
    consumed, seen = 0, set()
    for it in range(2000):
        want = megatron_rampup_batch(consumed, start, incr, ramp, final)
        assert sched.batch_at(it, consumed) == want, (it, consumed)
        seen.add(want)
        consumed += want
    assert final in seen and start in seen
    assert seen <= set(sched.sizes(2000))


@pytest.mark.parametrize("train_samples", [1, 500, 1000, 1001, 5000, 12_345])
def test_rampup_run_length_is_megatrons_rounded_up(train_samples):
    start, incr, ramp, final = 4, 4, 1000, 64
    sched = build_schedule(final, [start, incr, ramp], None, None, seq_length=128)
    megatron = megatron_rampup_train_iters(train_samples, start, incr, ramp, final)
    ours = sched.iterations_for(train_samples)
    # Megatron drops a partial last batch (floor); we take the fewest steps that cover every requested sample.
    assert sched.samples_through(ours) >= train_samples > sched.samples_through(ours - 1)
    assert ours - megatron in (0, 1)
    assert (ours == megatron) == (sched.samples_through(megatron) >= train_samples)


def test_step_schedule_in_tokens_is_megatrons():
    text = "0:8 20K:16, 40K:32 100K:64"
    sched = build_schedule(None, None, text, None, seq_length=100)
    ref = [(0, 8), (200, 16), (400, 32), (1000, 64)]  # thresholds in tokens // seq_length
    assert sched.points == tuple(ref) and sched.final == 64
    consumed = 0
    for it in range(100):
        assert sched.batch_at(it, consumed) == megatron_step_batch(consumed, ref)
        consumed += megatron_step_batch(consumed, ref)


def test_iteration_schedule_palm_style():
    sched = build_schedule(None, None, None, "512:0,1024:50000,2048:115000", seq_length=2048)
    assert [sched.batch_at(i, 10 ** 9) for i in (0, 49_999, 50_000, 114_999, 115_000, 10 ** 6)] == \
        [512, 512, 1024, 1024, 2048, 2048]
    assert sched.samples_through(50_001) == 50_000 * 512 + 1024
    assert sched.sizes(60_000) == [512, 1024]


def test_every_batch_must_split_into_micro_batches():
    job = parse_args(["--micro-batch-size", "4", "--batch-size-schedule", "6:0,8:5", "--train-iters", "9"]).job
    with pytest.raises(ConfigError, match=r"the batch schedule's batch 6 \(6\) must be a multiple of micro-batch-size"):
        job.resolve_batch(1)
    job = parse_args(["--micro-batch-size", "4", "--batch-size-schedule", "4:0,8:5", "--train-iters", "9"]).job
    assert job.resolve_batch(1) == 2 and job.training.global_batch_size == 8


def test_train_samples_with_a_schedule_resolve_to_the_steps_that_cover_them():
    job = parse_args(["--micro-batch-size", "4", "--batch-size-schedule", "4:0,8:2", "--train-samples", "21"]).job
    job.resolve_batch(1)
    assert job.training.train_iters == 4  # 4 + 4 + 8 = 16 < 21 <= 24


# --- the LR schedule against Megatron's get_lr, which counts samples ---------------------------------------------

def megatron_get_lr(num_steps, init_lr, max_lr, min_lr, warmup_steps, decay_steps, style, wsd_steps=None,
                    wsd_style=None):
    if warmup_steps > 0 and num_steps <= warmup_steps:
        return init_lr + (max_lr - init_lr) * float(num_steps) / float(warmup_steps)
    if style == "constant":
        return max_lr
    if num_steps > decay_steps:
        return min_lr
    if style == "inverse-square-root":
        return max(min_lr, max_lr * max(warmup_steps, 1) ** 0.5 / max(num_steps, 1) ** 0.5)
    ratio = (num_steps - warmup_steps) / (decay_steps - warmup_steps)
    if style == "linear":
        coeff = 1.0 - ratio
    elif style == "cosine":
        coeff = 0.5 * (math.cos(math.pi * ratio) + 1.0)
    else:  # WSD
        start = decay_steps - wsd_steps
        if num_steps <= start:
            coeff = 1.0
        else:
            a = (num_steps - start) / wsd_steps
            coeff = {"linear": 1.0 - a, "cosine": 0.5 * (math.cos(math.pi * a) + 1.0),
                     "exponential": 2.0 * 0.5 ** a - 1.0, "minus_sqrt": 1.0 - math.sqrt(a)}[wsd_style]
    return min_lr + coeff * (max_lr - min_lr)


CASES = [dict(lr_decay_style="linear"), dict(lr_decay_style="cosine"),
         dict(lr_decay_style="inverse-square-root", lr_warmup_init=1e-3),
         dict(lr_decay_style="constant", lr_warmup_init=5e-4)] + [
    dict(lr_decay_style="WSD", lr_wsd_decay_iters=12, lr_wsd_decay_style=s)
    for s in ("linear", "cosine", "exponential", "minus_sqrt")]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
@pytest.mark.parametrize("ramp", [None, [4, 4, 100]])
def test_lr_at_every_step_is_megatrons_in_samples(case, ramp):
    """Megatron: scheduler.step(increment=current global batch) after each update, the LR of step k being get_lr
    after k increments; ours passes the samples consumed after the step (the first update is warmup step 1)."""
    final, iters, warm, decay = 32, 60, 5, 50
    cfg = OptimConfig(lr=1e-3, min_lr=1e-5, lr_warmup_iters=warm, lr_decay_iters=decay, **case)
    cfg.validate()
    sched = build_schedule(final, ramp, None, None, seq_length=16)
    for it, consumed, batch in sched.walk(iters):
        ours = lr_at(it, cfg, iters, progress=(consumed + batch) / final)
        want = megatron_get_lr(consumed + batch, cfg.lr_warmup_init, cfg.lr, cfg.min_lr, warm * final, decay * final,
                               cfg.lr_decay_style, (cfg.lr_wsd_decay_iters or 0) * final, cfg.lr_wsd_decay_style)
        assert ours == pytest.approx(want, rel=1e-12, abs=1e-15), (it, consumed)


def test_constant_batch_progress_is_the_iteration():
    cfg = OptimConfig(lr=1e-3, lr_warmup_iters=3, lr_decay_style="cosine")
    assert [lr_at(i, cfg, 10) for i in range(10)] == [lr_at(i, cfg, 10, progress=i + 1) for i in range(10)]


def test_exponential_decay_is_geometric_from_lr_to_min_lr():
    cfg = OptimConfig(lr=1e-3, min_lr=1e-5, lr_warmup_iters=0, lr_decay_style="exponential", lr_decay_iters=100)
    cfg.validate()
    assert lr_at(-1, cfg, 100) == pytest.approx(1e-3)  # progress 0
    assert lr_at(49, cfg, 100) == pytest.approx(1e-4)  # half way: the geometric mean
    assert lr_at(99, cfg, 100) == pytest.approx(1e-5) and lr_at(150, cfg, 100) == 1e-5
    ratios = [lr_at(i + 1, cfg, 100) / lr_at(i, cfg, 100) for i in range(0, 98)]
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-9)


def test_wsd_samples_flag_resolves_to_iterations():
    job = parse_args(["--lr-decay-style", "WSD", "--lr-wsd-decay-samples", "100", "--global-batch-size", "8",
                      "--micro-batch-size", "8", "--lr-wsd-decay-style", "cosine"]).job
    job.resolve_batch(1)
    assert job.optim.lr_wsd_decay_iters == 13 and job.optim.lr_wsd_decay_style == "cosine"
    with pytest.raises(ConfigError, match="--lr-wsd-decay-style must be one of"):
        parse_args(["--lr-decay-style", "WSD", "--lr-wsd-decay-iters", "5", "--lr-wsd-decay-style", "square"])
