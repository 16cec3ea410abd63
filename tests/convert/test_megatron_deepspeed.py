"""Megatron-DeepSpeed checkpoints <-> ours: round trips with equal weights at TP1 x PP1 (mp_rank files with a
'module', as --no-pipeline-parallel saves) and TP2 x PP2 (GPTModelPipe's per-layer files), both QKV orders; the
layout is the one Megatron-DeepSpeed's code reads (file names, legacy keys, [q; k; v] blocks per TP shard)."""

from __future__ import annotations

import os

import pytest
import torch

from megatron_code.config.cli import parse_args
from megatron_code.convert import megatron_deepspeed as mds
from megatron_code.model import GPT

BASE = ["--num-layers", "4", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "32",
        "--max-position-embeddings", "32", "--model.vocab_size", "100"]
LLAMA = ["--swiglu", "--normalization", "RMSNorm", "--use-rotary-position-embeddings", "--no-position-embedding",
         "--untie-embeddings-and-output-weights", "--disable-bias-linear"]


@pytest.mark.parametrize("flags", [LLAMA, []], ids=["llama-style", "gpt"])
@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 2)])
@pytest.mark.parametrize("layout", ["blocks", "per-head"])
def test_round_trip_equal_weights(flags, tp, pp, layout, tmp_path):
    job = parse_args(BASE + flags).job
    model = GPT(job.model)
    model.init_weights(torch.Generator().manual_seed(1))
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    out = tmp_path / "mds"
    mds.write_megatron_deepspeed(job, sd, str(out), tp, pp, iteration=5, consumed=20, qkv_layout=layout)
    tag = out / "global_step5"
    assert (out / "latest").read_text() == "global_step5"
    files = sorted(os.listdir(tag))
    # one per model-parallel rank: TP ranks, or PP x TP with GPTModelPipe (as DeepSpeed's pipeline engine saves)
    assert [f"mp_rank_{r:02d}_model_states.pt" for r in range(tp * pp)] == [f for f in files if
                                                                            f.startswith("mp_rank")]
    if pp > 1:  # GPTModelPipe: idx 1 embedding, 2..5 layers, 6 final norm, 7 head
        assert f"layer_01-model_{tp - 1:02d}-model_states.pt" in files and "layer_07-model_00-model_states.pt" in files
        layer = torch.load(tag / "layer_02-model_00-model_states.pt", weights_only=False)
        assert "self_attention.query_key_value.weight" in layer and "post_attention_layernorm.weight" in layer
    else:
        module = torch.load(tag / "mp_rank_00_model_states.pt", weights_only=False)["module"]
        qkv = module["language_model.encoder.layers.0.self_attention.query_key_value.weight"]
        assert qkv.shape == (3 * 64 // tp, 64)
        if layout == "blocks":  # current Megatron-DeepSpeed: [q; k; v] thirds of each shard
            assert torch.equal(qkv[:64 // tp], sd["layers.0.attn.q_proj.weight"][:64 // tp])
    job2, state = mds.read_megatron_deepspeed(str(out), layout)
    assert set(state.module) == set(sd)
    for k, v in sd.items():
        assert torch.equal(state.module[k], v.float()), k
    assert state.client_state["iteration"] == 5 and state.client_state["consumed_samples"] == 20
    assert job2.model.position_embedding == job.model.position_embedding
