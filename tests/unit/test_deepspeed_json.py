"""The DeepSpeed JSON is merged into the job while the command line is resolved, before anything is built (issue 14,
finding 9): its gradient_clipping is honoured (a different --clip-grad is an error naming both), a ZeRO stage or
precision given only there is the job's, and keys for DeepSpeed features we do not use are refused in one line."""

import json

import pytest

from megatron_code import cli_main
from megatron_code.config import ConfigError
from megatron_code.config.cli import parse_args
from megatron_code.parallel.engine import deepspeed_config

TINY = ["--preset", "tiny", "--model.vocab_size", "64"]


def _ds(tmp_path, **cfg) -> str:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def test_gradient_clipping_from_the_json_is_honoured(tmp_path):
    path = _ds(tmp_path, gradient_clipping=0.25, zero_optimization={"stage": 2})
    out = parse_args(TINY + ["--deepspeed_config", path])
    job = out.job
    assert job.optim.clip_grad == 0.25 and job.parallel.zero_stage == 2
    assert any("gradient_clipping" in n for n in out.notes)
    assert deepspeed_config(job, job.resolve_batch(1))["gradient_clipping"] == 0.25
    # ZeRO-0 fp32: the trainer clips (to log the norm), at the JSON's value; DeepSpeed's own clipping is off
    job = parse_args(TINY + ["--deepspeed-config", _ds(tmp_path, gradient_clipping=0.25)]).job
    assert job.optim.clip_grad == 0.25 and deepspeed_config(job, job.resolve_batch(1))["gradient_clipping"] == 0.0


def test_conflicts_with_the_command_line_are_errors_naming_both(tmp_path):
    path = _ds(tmp_path, gradient_clipping=0.25)
    with pytest.raises(ConfigError, match=r"sets gradient_clipping = 0.25 but --clip-grad is 1.0"):
        parse_args(TINY + ["--deepspeed_config", path, "--clip-grad", "1.0"])
    assert parse_args(TINY + ["--deepspeed_config", path, "--clip-grad", "0.25"]).job.optim.clip_grad == 0.25
    path = _ds(tmp_path, zero_optimization={"stage": 3})
    with pytest.raises(ConfigError, match=r"zero_optimization.stage = 3 but --zero-stage is 1"):
        parse_args(TINY + ["--deepspeed_config", path, "--zero-stage", "1"])
    path = _ds(tmp_path, bf16={"enabled": True})
    assert parse_args(TINY + ["--deepspeed_config", path]).job.training.precision == "bf16"
    with pytest.raises(ConfigError, match=r"bf16.enabled = bf16 but --bf16 \(precision\) is fp16"):
        parse_args(TINY + ["--deepspeed_config", path, "--fp16"])


@pytest.mark.parametrize("key", ["curriculum_learning", "data_efficiency", "amp", "optimizer", "scheduler"])
def test_unsupported_keys_are_refused_in_one_line(tmp_path, key, capsys):
    path = _ds(tmp_path, **{key: {"enabled": True}})
    with pytest.raises(ConfigError, match=rf'"{key}" is not supported .*: remove it'):
        parse_args(TINY + ["--deepspeed_config", path])
    assert cli_main.main(TINY + ["--deepspeed_config", path]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --deepspeed_config"), err


def test_bad_json_and_missing_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_args(TINY + ["--deepspeed_config", str(bad)])
    out = parse_args(TINY + ["--deepspeed_config", str(tmp_path / "absent.json")])
    assert any("does not exist here" in n for n in out.notes)
    from megatron_code.config.deepspeed_json import merge_deepspeed_json
    with pytest.raises(ConfigError, match="file not found"):  # the trainer's call, before anything is built
        merge_deepspeed_json(out.job, None, [])


def test_fp16_loss_scaling_from_the_json_wins_as_in_megatron_deepspeed(tmp_path):
    # Megatron-DeepSpeed's ds_config_gpt template beside its launch line: the engine takes the JSON's values
    path = _ds(tmp_path, fp16={"enabled": True, "loss_scale": 0, "loss_scale_window": 500, "hysteresis": 2,
                               "min_loss_scale": 1, "initial_scale_power": 11}, gradient_clipping=1.0)
    out = parse_args(TINY + ["--deepspeed_config", path, "--fp16", "--loss-scale-window", "1000", "--clip-grad", "1"])
    t = out.job.training
    assert (t.loss_scale_window, t.initial_loss_scale_power, t.hysteresis) == (500, 11, 2)
    assert any("loss-scale-window = 500 from --deepspeed_config" in n for n in out.notes)
