"""A bf16 run's HF export writes the fp32 master weights, not the bf16-rounded model weights (ZeRO-0, whose
FP16_Optimizer keeps flat fp32 groups, and ZeRO-1, whose partitions are fp32). The checkpoints are written by a
real DeepSpeed engine (world size 1) whose masters are set to values bf16 cannot hold."""

from __future__ import annotations

import os

import pytest
import torch

from megatron_code.config.model import ModelConfig
from megatron_code.convert import export_checkpoint
from megatron_code.model import GPT

pytest.importorskip("transformers")
from safetensors.torch import load_file  # noqa: E402


def bf16_checkpoint(save_dir: str, zero: int):
    from megatron_code.convert.hf import build_job
    from megatron_code.parallel.deepspeed_compat import zero0_masters
    from megatron_code.parallel.engine import deepspeed_config, init_distributed, initialize_engine
    from megatron_code.training import checkpoint as ckpt
    from megatron_code.training.optimizer import build_optimizer

    cfg = ModelConfig(num_layers=1, hidden_size=32, num_attention_heads=2, vocab_size=64, max_position_embeddings=64,
                      norm="rmsnorm", activation="swiglu", bias=False)
    model = GPT(cfg)
    model.init_weights(torch.Generator().manual_seed(0))
    fp32 = {k: v.clone() for k, v in model.state_dict().items()}
    job = build_job(cfg)
    job.training.precision = "bf16"
    job.parallel.zero_stage = zero
    job.data.seq_length = 32
    job.validate()
    init_distributed("gloo")
    engine = initialize_engine(model, build_optimizer(model, job.optim), deepspeed_config(job, job.resolve_batch(1)))
    with torch.no_grad():  # masters hold the unrounded values, as after training steps
        if zero == 0:
            masters = zero0_masters(engine.optimizer)
            assert masters, type(engine.optimizer)
            named = {id(p): n for n, p in engine.module.named_parameters()}
            for lp, _, view in masters:
                view.copy_(fp32[named[id(lp)]])
        else:
            from deepspeed.utils import safe_set_full_fp32_param

            for n, p in engine.module.named_parameters():
                safe_set_full_fp32_param(p, fp32[n])
    client = {"iteration": 0, "consumed_samples": 0, "rng": ckpt.rng_state(), "tokenizer_fingerprint": None,
              "layout": {"tp": 1, "pp": 1, "dp": 1, "zero": zero}}
    path = ckpt.save_checkpoint(engine, job, save_dir, 0, client, None, is_rank0=True)
    return path, fp32


@pytest.mark.parametrize("zero", [0, 1])
def test_bf16_export_uses_fp32_masters(zero, tmp_path):
    path, fp32 = bf16_checkpoint(str(tmp_path / "ckpt"), zero)
    from megatron_code.training.checkpoint import load_consolidated

    _, rounded, _ = load_consolidated(path)
    key = "layers.0.attn.q_proj.weight"
    assert not torch.equal(rounded[key], fp32[key])  # the model states really are rounded
    out = str(tmp_path / "hf")
    export_checkpoint(path, out, with_tokenizer=False)
    tensors = load_file(os.path.join(out, "model.safetensors"))
    assert torch.equal(tensors["model.layers.0.self_attn.q_proj.weight"], fp32[key])
    assert torch.equal(tensors["model.embed_tokens.weight"], fp32["embed.word.weight"][:64])
