"""LayerDrop and DropHead (the democratization study's structure dropout) under tensor parallelism (TP2, gloo):
the ranks hold one model (the loss and every replicated parameter stay identical across TP ranks after steps with
both on; a LayerDrop decision differing between ranks would split them), LayerDrop drops the same layers on every
TP rank, and DropHead draws each rank's heads independently (from the per-TP-rank RNG stream: a shared stream would
drop head h on rank 0 together with head h + H/2 on rank 1, every time)."""

import pytest
import torch

from megatron_code.config.model import ModelConfig
from megatron_code.model import GPT
from megatron_code.parallel.groups import ParallelGroups
from megatron_code.parallel.plans import plan_for
from megatron_code.parallel.random import seed_parallel_rng
from megatron_code.parallel.tensor_parallel import apply_tensor_parallel
from megatron_code.testing import run_distributed
from megatron_code.training.losses import causal_lm_loss

pytestmark = pytest.mark.distributed

B, T = 8, 8


def _run(rank, world):
    from megatron_code.parallel import mappings as M

    groups = ParallelGroups.build(tp=world)
    cfg = ModelConfig(num_layers=4, hidden_size=32, num_attention_heads=4, ffn_hidden_size=64, vocab_size=50,
                      vocab_pad_multiple=8, max_position_embeddings=16, layerdrop=0.5, drophead=0.5)
    tracker = seed_parallel_rng(1234, groups.tp_rank)
    model = GPT(cfg)
    model.init_weights()
    model = apply_tensor_parallel(model, plan_for(cfg, world), groups, rng_tracker=tracker).train()
    kept_layers, head_masks = [], []
    for layer in model.layers:  # which layers ran (a dropped one adds 0) and which heads reached o_proj
        layer.register_forward_hook(lambda m, a, out: kept_layers.append(int(not torch.equal(out, a[0]))))
        layer.attn.o_proj.register_forward_pre_hook(
            lambda m, a: head_masks.append((a[0].reshape(B, T, -1, cfg.hidden_size // cfg.num_attention_heads)
                                            .abs().sum((1, 3)) > 0).int()))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, 50, (B, T + 1), generator=g)
    losses = []
    for _ in range(3):
        loss = causal_lm_loss(model(tokens[:, :-1]), tokens[:, 1:], torch.ones(B, T), groups.tp_group)
        losses.append(float(loss))
        loss.backward()
        opt.step()
        opt.zero_grad()
    replicated = {n: p.detach().clone() for n, p in model.named_parameters()
                  if not getattr(p, "tensor_model_parallel", False)}
    gathered = {n: M.all_gather(p.unsqueeze(0), 0, groups.tp_group) for n, p in replicated.items()}
    same = all(torch.equal(v[0], v[1]) for v in gathered.values())
    return losses, kept_layers, torch.stack(head_masks).numpy(), same


def test_layerdrop_and_drophead_under_tp2():
    (l0, k0, h0, same0), (l1, k1, h1, same1) = run_distributed(_run, 2, timeout=300)
    assert l0 == l1 and same0 and same1, "the TP ranks no longer hold one model"
    assert k0 == k1 and 0 < sum(k0) < len(k0), "LayerDrop must drop the same layers on every TP rank"
    assert h0.shape == h1.shape and h0.shape[-1] == 2  # (layer calls, B, local heads)
    assert 0 < h0.mean() < 1 and (h0 != h1).any(), "DropHead masks of the two TP ranks' heads are identical"
