"""Nonsense is refused up front, in one line naming the fix (issue 14, findings 7 and 8): NaN/inf in any float
field, integers that would be truncated, conflicting precision flags, --adam-eps <= 0, --eval-iters 0 with
validation on, zero blend weights; an empty validation split is reported instead of skipped without a word."""

import dataclasses
import typing

import pytest

from megatron_code import cli_main
from megatron_code.config import ConfigError
from megatron_code.config.cli import parse_args
from megatron_code.config.job import SECTIONS

TINY = ["--preset", "tiny", "--model.vocab_size", "64"]


def _fields_of(kind):
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            t = hints[f.name]
            if t is kind or t == typing.Optional[kind]:
                yield f"{section}.{f.name}"


FLOAT_FIELDS = list(_fields_of(float))
INT_FIELDS = list(_fields_of(int))


def test_there_are_fields_to_check():
    assert "optim.lr" in FLOAT_FIELDS and "model.num_layers" in INT_FIELDS and len(FLOAT_FIELDS) > 15


@pytest.mark.parametrize("field", FLOAT_FIELDS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_every_float_field_refuses_non_finite(field, value):
    with pytest.raises(ConfigError, match=rf"{field}: must be a finite number"):
        parse_args(TINY + [f"--{field}", value])


@pytest.mark.parametrize("field", INT_FIELDS)
def test_every_int_field_refuses_truncation(field):
    with pytest.raises(ConfigError, match=rf"{field}: expected int, got '2.5e0' \(refused rather than"):
        parse_args(TINY + [f"--{field}", "2.5e0"])


def test_megatron_integer_flags_are_not_truncated_but_exponents_are_read():
    with pytest.raises(ConfigError, match="num_layers: expected int, got '2.5e0'"):
        parse_args(TINY + ["--num-layers", "2.5e0"])
    assert parse_args(TINY + ["--num-layers", "4e0"]).job.model.num_layers == 4
    assert parse_args(TINY + ["--train-iters", "1e11"]).job.training.train_iters == 10 ** 11


@pytest.mark.parametrize("argv, pattern", [
    (["--fp16", "--bf16"], "--fp16 and --bf16 are both given: choose one"),
    (["--bf16", "--fp16"], "--fp16 and --bf16 are both given: choose one"),
    (["--adam-eps", "-1"], "--adam-eps must be positive"),
    (["--adam-eps", "0"], "--adam-eps must be positive"),
    (["--lr", "nan"], "optim.lr: must be a finite number"),
    (["--weight-decay", "-inf"], "must be a finite number"),
    (["--eval-iters", "0", "--eval-interval", "5"], "--eval-iters 0 with --eval-interval 5.*--eval-interval 0"),
    (["--eval-iters", "-1"], r"training.eval_iters must be >= 0"),
    (["--save-interval", "-5"], r"training.save_interval must be >= 0"),
    (["--seed", "-1"], r"training.seed must be in"),
    (["--num-workers", "-1"], r"data.num_workers must be >= 0"),
    (["--lr-warmup-fraction", "1.5"], r"optim.lr_warmup_fraction must be in \[0, 1\]"),
    (["--initial-loss-scale", "nan"], "--initial-loss-scale: must be a finite number"),
    (["--initial-loss-scale", "0"], "--initial-loss-scale must be a positive number"),
    (["--norm-epsilon", "0"], "norm_eps .* must be positive"),
    (["--data-path", "0", "A", "1", "B"], "blend weight 0 for A must be a positive number.*remove it"),
    (["--train-data-path", "1", "A", "-2", "B"], "blend weight -2 for B"),
])
def test_refused(argv, pattern):
    with pytest.raises(ConfigError, match=pattern):
        parse_args(TINY + argv)


def test_one_precision_flag_and_eval_off_are_fine():
    assert parse_args(TINY + ["--bf16"]).job.training.precision == "bf16"
    assert parse_args(TINY + ["--eval-iters", "0", "--eval-interval", "0"]).job.training.eval_iters == 0
    assert parse_args(TINY + ["--data-path", "0.3", "A", "0.7", "B"]).job.data.data_path == ["0.3", "A", "0.7", "B"]


@pytest.mark.parametrize("argv", [["--adam-eps", "-1"], ["--data-path", "0", "A", "1", "B"], ["--fp16", "--bf16"]])
def test_command_line_ends_in_one_line(argv, capsys):
    assert cli_main.main(TINY + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err


def test_empty_validation_split_is_reported(tmp_path):
    from megatron_code.data.indexed import IndexedDatasetWriter
    from megatron_code.training.data import build_job_data
    import numpy as np

    with IndexedDatasetWriter(str(tmp_path / "d"), np.int32) as w:
        for i in range(40):
            w.add_document(np.arange(1 + i % 20, dtype=np.int32))
    common = TINY + ["--data-path", str(tmp_path / "d"), "--seq-length", "8", "--train-iters", "2",
                     "--micro-batch-size", "2", "--eval-interval", "1", "--eval-iters", "1"]
    job = parse_args(common + ["--split", "100,0,0"]).job
    job.resolve_batch(1)
    data = build_job_data(job, 0, is_builder=True, barrier=None)
    assert data.valid is None
    assert len(data.notes) == 1 and "validation split is empty (--split 100,0,0" in data.notes[0]
    job = parse_args(common + ["--split", "80,20,0"]).job
    job.resolve_batch(1)
    data = build_job_data(job, 0, is_builder=True, barrier=None)
    assert data.valid is not None and data.notes == []
