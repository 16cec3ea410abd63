"""The democratization study's rules (training/formulas.py): values for its own shapes, the CLI `auto` switch,
and what --print-config shows."""

import math

import pytest

from megatron_code.cli_main import main
from megatron_code.config.base import ConfigError
from megatron_code.config.cli import parse_args
from megatron_code.training.formulas import (apply_study_formulas, non_embedding_parameters, study_lr, study_warmup,
                                             study_weight_decay)


def test_non_embedding_count_excludes_embeddings_and_head():
    job = parse_args(["--preset", "democratize-6b"]).job
    m = job.model
    per_layer = (4 * m.hidden_size * 32 * 256 + 3 * 32 * 256 + m.hidden_size  # q, k, v, o (+ biases)
                 + 2 * m.hidden_size * m.ffn_hidden_size + m.ffn_hidden_size + m.hidden_size  # MLP
                 + 4 * m.hidden_size)  # two LayerNorms
    assert non_embedding_parameters(m) == m.num_layers * per_layer + 2 * m.hidden_size  # + final norm


def test_lr_rule_does_not_reproduce_table_5_2():
    """0.003239 - 0.0001395 ln N for the study's three shapes vs the learning rates its Table 5.2 used."""
    got = [study_lr(non_embedding_parameters(parse_args(["--preset", n]).job.model))
           for n in ("democratize-300m", "democratize-2.5b", "democratize-6b")]
    assert [float(f"{v:.1e}") for v in got] == [3.2e-4, 1.1e-4, 4.8e-5]
    table = [3.0e-4, 1.6e-4, 1.2e-4]
    assert got[0] == pytest.approx(table[0], rel=0.1) and got[2] < table[2] / 2


def test_warmup_and_weight_decay_rules():
    assert study_warmup(0.95) == 40 and study_warmup(0.98) == 100 and study_warmup(0.999) == 2000
    # constant batch: N_tokens = b N_batches, so lambda = K / N_batches
    assert study_weight_decay(5000, 2 ** 21, 2 ** 21 * 150_000, 150_000) == pytest.approx(5000 / 150_000)
    assert study_weight_decay(5000, 100, 400, 4) == pytest.approx(5000 * math.sqrt(100 / 1600))


def test_apply_with_a_batch_schedule_counts_the_run_tokens():
    job = parse_args(["--weight-decay", "auto", "--batch-size-schedule", "4:0,8:2", "--train-iters", "4",
                      "--micro-batch-size", "4", "--seq-length", "16"]).job
    job.resolve_batch(1)
    notes = apply_study_formulas(job)
    assert job.optim.weight_decay == pytest.approx(5000 * math.sqrt(8 * 16 / (24 * 16 * 4)))
    assert "N_tokens = 384" in notes[0] and "democratization study" in notes[0]


def test_auto_then_a_number_turns_the_rule_off():
    o = parse_args(["--lr", "auto", "--lr", "1e-3"]).job.optim
    assert not o.lr_auto and o.lr == 1e-3
    o = parse_args(["--lr", "1e-3", "--lr", "auto"]).job.optim
    assert o.lr_auto


def test_min_lr_above_the_auto_lr_is_an_error():
    job = parse_args(["--preset", "democratize-6b", "--lr", "auto", "--min-lr", "1e-4"]).job
    with pytest.raises(ConfigError, match=r"--min-lr \(0.0001\) exceeds --lr auto"):
        apply_study_formulas(job)


def test_print_config_shows_values_and_source(capsys):
    assert main(["--preset", "democratize-300m", "--lr", "auto", "--lr-warmup-iters", "auto", "--weight-decay",
                 "auto", "--global-batch-size", "64", "--train-iters", "1000", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "--lr auto = 3.2165e-04 = 0.003239 - 0.0001395 ln N with N = 1,208,797,184" in out
    assert "--lr-warmup-iters auto = 40" in out and "--weight-decay auto = 5.0000e+00" in out
    assert "  lr: 0.0003216" in out
