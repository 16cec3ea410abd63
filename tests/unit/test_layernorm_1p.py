"""--apply-layernorm-1p (Megatron's LayerNorm1P / zero-centred gamma): the gain is stored as w, initialised to 0,
applied as 1 + w. In fp32 it is exactly an ordinary norm of gain w + 1 (layer and whole model); Megatron-LM
checkpoints saved with it convert both ways keeping w; an HF export writes the ordinary gains."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from megatron_code.config.cli import parse_args
from megatron_code.convert import megatron_lm as mlm
from megatron_code.convert.hf import ordinary_norm_gains
from megatron_code.model import GPT
from megatron_code.model.norm import LayerNorm1P, RMSNorm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "16",
        "--max-position-embeddings", "16", "--model.vocab_size", "64", "--apply-layernorm-1p"]


def test_layers_equal_ordinary_norms_with_gain_w_plus_1():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 32, generator=g)
    w, b = 0.1 * torch.randn(32, generator=g), torch.randn(32, generator=g)
    ln1p = LayerNorm1P(32)
    ln1p.reset_parameters()
    assert torch.equal(ln1p.weight, torch.zeros(32))  # initialised to 0: gain 1
    ln = torch.nn.LayerNorm(32)
    with torch.no_grad():
        ln1p.weight.copy_(w), ln1p.bias.copy_(b), ln.weight.copy_(w + 1), ln.bias.copy_(b)
    assert torch.equal(ln1p(x), ln(x))
    rms1p, rms = RMSNorm(32, zero_centered=True), RMSNorm(32)
    rms1p.reset_parameters()
    assert torch.equal(rms1p.weight, torch.zeros(32))
    with torch.no_grad():
        rms1p.weight.copy_(w), rms.weight.copy_(w + 1)
    assert torch.equal(rms1p(x), rms(x))


@pytest.mark.parametrize("extra", [[], ["--normalization", "RMSNorm"]], ids=["layernorm", "rmsnorm"])
def test_model_equals_the_ordinary_model_and_converts_both_ways(extra, tmp_path):
    job = parse_args(BASE + extra).job
    assert job.model.norm_zero_centered
    model = GPT(job.model)
    model.init_weights(torch.Generator().manual_seed(1))
    sd = model.state_dict()
    assert torch.equal(sd["layers.0.norm1.weight"], torch.zeros(32)) and torch.equal(sd["final_norm.weight"],
                                                                                     torch.zeros(32))
    with torch.no_grad():  # trained gains: away from 0
        for k, v in sd.items():
            if k.endswith("norm1.weight") or k.endswith("norm2.weight") or k == "final_norm.weight":
                v.copy_(0.05 * torch.randn(v.shape, generator=torch.Generator().manual_seed(len(k))))
    cfg, plain_sd = ordinary_norm_gains(job.model, sd)  # what the HF export writes
    assert not cfg.norm_zero_centered
    plain = GPT(cfg)
    plain.load_state_dict(plain_sd)
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(2))
    pos = torch.arange(16).expand(2, 16)
    assert torch.equal(model.eval()(ids, pos), plain.eval()(ids, pos))
    # Megatron-LM both ways: apply_layernorm_1p in the args, w as stored, read back as a zero-centred model
    mlm.write_megatron_lm(job, sd, str(tmp_path / "m"), 1, 1, iteration=1)
    ck = torch.load(tmp_path / "m" / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt", weights_only=False)
    assert ck["args"].apply_layernorm_1p is True
    assert torch.equal(ck["model"]["decoder.final_layernorm.weight"], sd["final_norm.weight"])
    job2, state = mlm.read_megatron_lm(str(tmp_path / "m"))
    assert job2.model.norm_zero_centered
    for k, v in sd.items():
        assert torch.equal(state.module[k], v), k


def test_trains_from_the_command_line_and_exports(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = lambda *a: subprocess.run([sys.executable, *map(str, a)], cwd=ROOT, env=env, capture_output=True,  # noqa
                                    text=True, timeout=600)
    r = run("pretrain_code.py", *BASE, "--mock-data", "--micro-batch-size", "2", "--global-batch-size", "2",
            "--train-iters", "2", "--lr", "1e-2", "--log-interval", "1", "--training.progress_bar", "false",
            "--eval-interval", "0", "--save", tmp_path / "run")
    assert r.returncode == 0, r.stderr[-3000:]
    assert len([x for x in map(json.loads, open(tmp_path / "run" / "metrics.jsonl")) if x["kind"] == "train"]) == 2
    r = run("tools/convert_checkpoint.py", "--to", "megatron-lm", "--load", tmp_path / "run", "--save",
            tmp_path / "mlm")
    assert r.returncode == 0, r.stderr[-3000:]
    ck = torch.load(tmp_path / "mlm" / "iter_0000002" / "mp_rank_00" / "model_optim_rng.pt", weights_only=False)
    gain = ck["model"]["decoder.layers.0.input_layernorm.weight"]
    assert ck["args"].apply_layernorm_1p and 0 < gain.abs().max() < 0.1  # stored near 0, and it trained
