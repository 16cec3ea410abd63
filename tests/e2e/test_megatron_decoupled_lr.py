"""Megatron's --decoupled-lr / --decoupled-min-lr: the word embeddings and the output layer train with their own
peak and floor learning rate on the same schedule. With --decoupled-lr 0 they stay at their initial values while
every other weight moves; the optimizer groups say which parameters are decoupled."""

from __future__ import annotations

import pytest
import torch

from megatron_code.config.cli import parse_args
from megatron_code.model import GPT
from megatron_code.training.checkpoint import load_consolidated
from megatron_code.training.optimizer import param_groups

from ._cmd import run

pytestmark = [pytest.mark.e2e]
LINE = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--model.vocab_size", "256",
        "--seq-length", "32", "--max-position-embeddings", "32", "--lr", "1e-3", "--mock-data", "--micro-batch-size",
        "2", "--global-batch-size", "4", "--log-interval", "1", "--training.progress_bar", "false",
        "--eval-interval", "0", "--train-iters", "3", "--untie-embeddings-and-output-weights"]


def test_decoupled_groups():
    job = parse_args(LINE + ["--decoupled-lr", "5e-4", "--decoupled-min-lr", "5e-5"]).job
    assert (job.optim.decoupled_lr, job.optim.decoupled_min_lr) == (5e-4, 5e-5)
    model = GPT(job.model)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, 0.1, decoupled=True)
    dec = [g for g in groups if g.get("decoupled")][0]
    assert sorted(names[id(p)] for p in dec["params"]) == ["embed.word.weight", "lm_head.weight"]


def test_decoupled_lr_zero_freezes_embeddings_and_output(tmp_path):
    save = tmp_path / "ckpt"
    run(LINE + ["--decoupled-lr", "0", "--save", str(save)], timeout=600)
    job, sd, _ = load_consolidated(str(save))
    init = GPT(job.model)
    init.init_weights(torch.Generator().manual_seed(job.training.seed))
    start = init.state_dict()
    assert torch.equal(sd["embed.word.weight"], start["embed.word.weight"].float())
    assert torch.equal(sd["lm_head.weight"], start["lm_head.weight"].float())
    assert not torch.equal(sd["layers.0.attn.q_proj.weight"], start["layers.0.attn.q_proj.weight"].float())
