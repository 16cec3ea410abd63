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


# Tensor-parallel runs keep one fp32 master shard per TP rank: a real TP2 DeepSpeed run (2 gloo processes) trained
# a few steps, so its masters hold values its bf16/fp16 weights cannot; the export must merge the shards like the
# weights. The masters are read back from the live engines on each rank as the reference.
TP2_BASE = ["--preset", "tiny", "--model.vocab_size", "64", "--model.num_layers", "2", "--model.hidden_size", "32",
            "--model.num_attention_heads", "4", "--model.ffn_hidden_size", "64", "--seq-length", "16",
            "--mock-data", "--micro-batch-size", "2", "--global-batch-size", "2", "--log-interval", "100",
            "--training.progress_bar", "false", "--eval-interval", "0", "--train-iters", "3", "--save-interval", "3",
            "--lr", "5e-3", "--lr-warmup-iters", "1", "--tensor-model-parallel-size", "2",
            "--model.activation", "swiglu", "--model.norm", "rmsnorm", "--model.tie_embeddings", "false"]
# (fp16 takes the ZeRO-0 path of bf16, FP16_Optimizer, but DeepSpeed's CPU accelerator has no fp16 here.)
TP2_RUNS = {"bf16_zero0": ["--bf16", "--zero-stage", "0"], "bf16_zero1": ["--bf16", "--zero-stage", "1"]}


def _tp2_train(rank, world, root):
    import sys

    from megatron_code.config.cli import parse_args
    from megatron_code.parallel.deepspeed_compat import zero0_masters
    from megatron_code.training.trainer import Trainer

    out = {}
    for name, flags in TP2_RUNS.items():
        job = parse_args(TP2_BASE + flags + ["--save", f"{root}/{name}"]).job
        stdout, sys.stdout = sys.stdout, open(os.devnull, "w")
        try:
            trainer = Trainer(job)
            trainer.train()
        finally:
            sys.stdout.close()
            sys.stdout = stdout
        engine = trainer.engine
        named = {id(p): n.removeprefix("module.") for n, p in engine.module.named_parameters()}
        masters = zero0_masters(engine.optimizer)
        if masters:  # ZeRO-0: FP16_(Unfused)Optimizer
            local = {named[id(lp)]: view.detach().float().clone() for lp, _, view in masters}
            kind = type(engine.optimizer).__name__
        else:  # BF16_Optimizer / ZeRO-1
            from deepspeed.utils import safe_get_full_fp32_param

            local = {named[id(p)]: safe_get_full_fp32_param(p).detach().float().clone()
                     for p in engine.module.parameters()}
            kind = type(engine.optimizer).__name__
        torch.save(local, f"{root}/{name}-masters-{rank}.pt")  # tensors do not survive the result queue
        out[name] = kind
    return out


@pytest.mark.distributed
@pytest.mark.slow
def test_tensor_parallel_export_merges_the_fp32_master_shards(tmp_path):
    from megatron_code.convert import import_model
    from megatron_code.parallel.tensor_parallel import merge_tp_shards, partition_spec
    from megatron_code.testing import run_distributed
    from megatron_code.training.checkpoint import load_consolidated, load_job_config

    root = str(tmp_path)
    ranks = run_distributed(_tp2_train, 2, root, timeout=1800)
    for name in TP2_RUNS:
        kind = ranks[0][name]
        save = os.path.join(root, name)
        job = load_job_config(save)
        masters = merge_tp_shards([torch.load(f"{root}/{name}-masters-{r}.pt") for r in range(2)],
                                  partition_spec(job.model, 2))
        _, rounded, _ = load_consolidated(save)
        assert any(not torch.equal(rounded[k].float(), v) for k, v in masters.items()), name  # really rounded
        out = os.path.join(root, f"hf-{name}")
        export_checkpoint(save, out, with_tokenizer=False)
        _, cfg, state, _ = import_model(out)
        assert set(masters) <= set(state), name
        for key, want in masters.items():
            got = state[key]
            if key in ("embed.word.weight", "lm_head.weight"):  # the export keeps the real vocabulary rows only
                got, want = got[:64], want[:64]
            assert torch.equal(got, want), f"{name} ({kind}): {key} is not the fp32 master"
