"""The `phases:` list of a job config: merged per phase, validated up front, shipped examples parse."""

import os

import pytest

from megatron_code.config.base import ConfigError
from megatron_code.config.cli import parse_args

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_example_curricula_parse_with_the_papers_values():
    job = parse_args(["--config", os.path.join(ROOT, "examples/recipes/democratize-6b-three-phases.yaml")]).job
    phases = job.phase_jobs()
    assert [(n, j.optim.lr, j.training.train_iters, j.training.global_batch_size * j.data.seq_length)
            for n, _, j in phases] == [("pile", 1.2e-4, 150000, 2 * 2 ** 20),
                                       ("multilang-code", 0.4e-4, 100000, 1.5 * 2 ** 20),
                                       ("python", 0.4e-4, 50000, 0.75 * 2 ** 20)]
    phi = parse_args(["--config", os.path.join(ROOT, "examples/recipes/phi-1-pretrain-finetune.yaml")]).job
    (n1, p1, j1), (n2, p2, j2) = phi.phase_jobs()
    assert (j1.training.global_batch_size, j1.training.train_iters, j1.optim.lr) == (1024, 36000, 1e-3)
    assert (p2, j2.training.global_batch_size, j2.training.train_iters, j2.optim.lr, j2.optim.lr_warmup_iters,
            j2.optim.weight_decay) == ("reset", 256, 6000, 1e-4, 50, 0.01)


def test_phase_errors_name_the_phase(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("phases:\n  - name: a\n    optimizer_state: maybe\n")
    with pytest.raises(ConfigError, match=r"phases\[0\] \(a\): optimizer_state must be keep or reset"):
        parse_args(["--config", str(bad)])
    bad.write_text("phases:\n  - name: a\n    optim: {lr: -1}\n")
    with pytest.raises(ConfigError, match=r"phase a: --lr must be positive"):
        parse_args(["--config", str(bad)])
    bad.write_text("phases:\n  - name: a\n    trainig: {train_iters: 3}\n")
    with pytest.raises(ConfigError, match=r"unknown config section 'trainig'"):
        parse_args(["--config", str(bad)])
    bad.write_text("phases: {name: a}\n")
    with pytest.raises(ConfigError, match="phases: expected a list of mappings"):
        parse_args(["--config", str(bad)])
