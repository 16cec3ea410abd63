"""T5 relative position bias under tensor parallelism (TP2, gloo, fp32): the bias table is split by heads like
q/k/v (HeadParallelEmbedding), so the sharded model gives the single-process logits, loss and gradients (each
rank's table gradient is its heads' columns of the full one), with and without sequence parallelism, and a
checkpoint's shards merge back to the full table."""

import copy

import pytest
import torch

from megatron_code.config.model import ModelConfig
from megatron_code.model import GPT
from megatron_code.parallel.groups import ParallelGroups
from megatron_code.parallel.plans import plan_for
from megatron_code.parallel.tensor_parallel import apply_tensor_parallel, merge_tp_shards, partition_spec
from megatron_code.testing import run_distributed
from megatron_code.training.losses import causal_lm_loss

pytestmark = pytest.mark.distributed

CFG = dict(num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=64, vocab_size=50,
           vocab_pad_multiple=8, max_position_embeddings=16, position_embedding="t5", t5_buckets=8,
           t5_max_distance=16)


def batch():
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, 50, (2, 13), generator=g)
    return tokens[:, :-1], tokens[:, 1:], torch.ones(2, 12)


def reference():
    torch.manual_seed(0)
    model = GPT(ModelConfig(**CFG))
    model.init_weights()
    x, y, mask = batch()
    logits = model(x)
    loss = causal_lm_loss(logits, y, mask)
    loss.backward()
    return model, logits.detach(), loss.detach()


def _run(rank, world):
    groups = ParallelGroups.build(tp=world)
    out = {}
    for sp in (False, True):
        ref, logits_ref, loss_ref = reference()
        model = apply_tensor_parallel(copy.deepcopy(ref), plan_for(ModelConfig(**CFG), world), groups,
                                      sequence_parallel=sp)
        model.zero_grad()
        x, y, mask = batch()
        logits = model(x)
        loss = causal_lm_loss(logits, y, mask, groups.tp_group)
        loss.backward()
        torch.testing.assert_close(loss.detach(), loss_ref, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(logits.detach(), logits_ref.chunk(world, -1)[rank], rtol=1e-5, atol=1e-6)
        table = model.layers[0].attn.rel_bias
        assert table.weight.shape == (8, 2) and table.weight.partition_dim == 1
        torch.testing.assert_close(table.weight.grad, ref.layers[0].attn.rel_bias.weight.grad.chunk(world, 1)[rank],
                                   rtol=1e-5, atol=1e-7)
        out[sp] = {n: p.detach().clone() for n, p in model.state_dict().items()}
    return out[False]


def test_t5_bias_tp2_equals_tp1():
    shards = run_distributed(_run, 2, timeout=300)
    ref, _, _ = reference()
    merged = merge_tp_shards(shards, partition_spec(ModelConfig(**CFG), 2))
    for name, value in ref.state_dict().items():
        assert torch.equal(merged[name], value), name
