"""Whole-model parity: the GPT sharded by its plan (TP 2, TP 4, SP at TP 2 and 4) gives the same logits, loss,
gradients and a few SGD steps of loss as the single-process model (gloo, CPU, fp32, dropout 0, 1e-5 relative).

Cases cover every architecture the presets use: sequential MHA + GELU + learned positions + tied head; parallel
block with one shared norm + MQA (replicated KV) + SwiGLU + RMSNorm + no bias + untied head; parallel block with two
norms + GQA (2 kv heads: sharded at TP 2, replicated at TP 4) + tied head + partial rotary + untied output bias
through a second variant."""

import copy

import pytest
import torch

from megatron_code.config.model import ModelConfig
from megatron_code.model import GPT
from megatron_code.parallel.groups import ParallelGroups
from megatron_code.parallel.plans import PlanError, match_plan, plan_for
from megatron_code.parallel.random import seed_parallel_rng
from megatron_code.parallel.tensor_parallel import (apply_tensor_parallel, merge_tp_shards, partition_spec,
                                                    split_for_tp, tensor_parallel_state)
from megatron_code.testing import run_distributed
from megatron_code.training.losses import causal_lm_loss

pytestmark = pytest.mark.distributed

B, T, STEPS = 2, 8, 3
BASE = dict(num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=64, vocab_size=50,
            vocab_pad_multiple=8, max_position_embeddings=16)
CASES = {
    "sequential_mha_gelu_learned_tied": dict(block="sequential", position_embedding="learned", norm="layernorm",
                                             activation="gelu", tie_embeddings=True, bias=True),
    "parallel_mqa_swiglu_nobias_untied": dict(block="parallel", parallel_shared_norm=True, num_kv_heads=1,
                                              activation="swiglu", norm="rmsnorm", bias=False, tie_embeddings=False),
    "parallel2norm_gqa_tied_rope": dict(block="parallel", parallel_shared_norm=False, num_kv_heads=2,
                                        activation="gelu_tanh", rotary_percent=0.5, tie_embeddings=True),
    "sequential_gqa_untied_outbias": dict(block="sequential", num_kv_heads=2, activation="swiglu",
                                          tie_embeddings=False, output_bias=True),
}


def make_cfg(name):
    return ModelConfig(**BASE, **CASES[name])


def close(a, b, what):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=lambda m: f"{what}: {m}")


def batch():
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, 50, (B, T + 1), generator=g)
    mask = torch.ones(B, T)
    mask[1, :2] = 0  # some positions carry no loss (FIM padding)
    return tokens[:, :-1], tokens[:, 1:], mask


def expected_shard(ref_grad, param, tp, r):
    dim = getattr(param, "partition_dim", None)
    return ref_grad if dim is None else ref_grad.chunk(tp, dim=dim)[r]


def check_case(name, groups, sp):
    tp, r = groups.tp_size, groups.tp_rank
    cfg = make_cfg(name)
    torch.manual_seed(0)
    ref = GPT(cfg)
    ref.init_weights()
    model = apply_tensor_parallel(copy.deepcopy(ref), plan_for(cfg, tp), groups, sequence_parallel=sp)
    def loss_fn(logits, labels, mask):
        return causal_lm_loss(logits, labels, mask, groups.tp_group)
    x, y, mask = batch()
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    tag = f"{name} tp={tp} sp={sp}"
    for step in range(STEPS):
        logits_ref = ref(x)
        loss_ref = causal_lm_loss(logits_ref, y, mask)
        logits = model(x)  # (B, T, V/tp)
        loss = loss_fn(logits, y, mask)
        close(loss.detach(), loss_ref.detach(), f"{tag} step {step} loss")
        if step == 0:
            assert logits.shape == (B, T, cfg.padded_vocab_size // tp)
            close(logits.detach(), logits_ref.detach().chunk(tp, dim=-1)[r], f"{tag} logits")
        loss_ref.backward()
        loss.backward()
        if step == 0:
            ref_params = dict(ref.named_parameters())
            for pname, p in model.named_parameters():
                close(p.grad, expected_shard(ref_params[pname].grad, p, tp, r), f"{tag} grad {pname}")
        opt_ref.step()
        opt.step()
        opt_ref.zero_grad()
        opt.zero_grad()
    return float(loss.detach())


def check_meta(groups):
    """A meta-device model shards to the same parameter shapes as a real one, without memory."""
    cfg = make_cfg("parallel_mqa_swiglu_nobias_untied")
    real = apply_tensor_parallel(GPT(cfg), plan_for(cfg, groups.tp_size), groups)
    with torch.device("meta"):
        meta = GPT(cfg)
    meta = apply_tensor_parallel(meta, plan_for(cfg, groups.tp_size), groups)
    shapes = {n: p.shape for n, p in real.named_parameters()}
    for n, p in meta.named_parameters():
        assert p.device.type == "meta" and p.shape == shapes[n], n
    assert tensor_parallel_state(meta) == tensor_parallel_state(real)
    with pytest.raises(PlanError, match="already tensor-parallel"):
        apply_tensor_parallel(meta, plan_for(cfg, groups.tp_size), groups)
    meta.to_empty(device="cpu")
    meta.init_weights()  # the model's own init works on the sharded layers
    assert torch.isfinite(meta(torch.zeros(1, 4, dtype=torch.long))).all()


def check_dropout_consistency(groups, sp):
    """With every dropout on, TP ranks must still hold one model: the loss is identical on all TP ranks and
    replicated parameters stay identical after a step (masks outside TP regions agree, inside they may not)."""
    from megatron_code.parallel import mappings as M

    cfg = ModelConfig(**BASE, **CASES["sequential_gqa_untied_outbias"], attention_dropout=0.2, hidden_dropout=0.2,
                      embedding_dropout=0.2)
    tracker = seed_parallel_rng(1234, groups.tp_rank)
    model = GPT(cfg)
    model.init_weights()
    model = apply_tensor_parallel(model, plan_for(cfg, groups.tp_size), groups, sequence_parallel=sp,
                                  rng_tracker=tracker)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y, mask = batch()
    for _ in range(2):
        loss = causal_lm_loss(model(x), y, mask, groups.tp_group)
        losses = M.all_gather(loss.detach().view(1), 0, groups.tp_group)
        assert torch.equal(losses, losses[:1].expand_as(losses)), f"loss differs across TP ranks (sp={sp}): {losses}"
        loss.backward()
        opt.step()
        opt.zero_grad()
    # Residual dropout: same mask on all TP ranks without SP (same activations), different masks under SP
    # (each rank holds other tokens; equal masks would correlate the shards).
    masks = M.all_gather(model.layers[0].dropout(torch.ones(1, 2, 4, 32)), 0, groups.tp_group)
    assert torch.equal(masks[0], masks[1]) != sp, f"residual dropout masks across TP ranks wrong (sp={sp})"
    for name, p in model.named_parameters():
        if not getattr(p, "tensor_model_parallel", False):
            copies = M.all_gather(p.detach().unsqueeze(0), 0, groups.tp_group)
            assert torch.equal(copies, copies[:1].expand_as(copies)), f"replicated {name} diverged (sp={sp})"
    # A sharded model can be deep-copied (process groups are shared, not copied) and the copy computes the same.
    clone = copy.deepcopy(model).eval()
    model.eval()
    close(clone(x), model(x), f"deepcopy of the sharded model (sp={sp})")


def check_reduction_count(groups):
    """The parallel block does ONE TP all-reduce per layer in the forward (attn + MLP summed first); the
    sequential block two. Plus one for the vocab-parallel embedding."""
    import torch.distributed as dist

    calls = []
    real = dist.all_reduce

    def counting(tensor, *a, **k):
        calls.append(tuple(tensor.shape))
        return real(tensor, *a, **k)

    for name, per_layer in (("parallel_mqa_swiglu_nobias_untied", 1), ("sequential_mha_gelu_learned_tied", 2)):
        cfg = make_cfg(name)
        model = apply_tensor_parallel(GPT(cfg), plan_for(cfg, groups.tp_size), groups)
        calls.clear()
        dist.all_reduce = counting
        try:
            with torch.no_grad():
                model(torch.zeros(1, 4, dtype=torch.long))
        finally:
            dist.all_reduce = real
        assert len(calls) == 1 + per_layer * cfg.num_layers, (name, calls)


def _run(rank, world, cases, sps):
    groups = ParallelGroups.build(tp=world)
    out = {}
    for sp in sps:
        for name in cases:
            out[(name, sp)] = check_case(name, groups, sp)
        check_dropout_consistency(groups, sp)
    check_meta(groups)
    check_reduction_count(groups)
    return out


@pytest.mark.parametrize("tp", [2, 4])
def test_tp_model_matches_single_process(tp):
    results = run_distributed(_run, tp, list(CASES), (False, True), timeout=180)
    assert all(res == results[0] for res in results)  # the loss is replicated on every TP rank


def test_plan_errors_are_clear():
    cfg = make_cfg("sequential_mha_gelu_learned_tied")
    model = GPT(cfg)
    with pytest.raises(PlanError, match="matches no module"):
        match_plan(model, {**plan_for(cfg, 2), "layers.*.attn.qkv": "column"})
    with pytest.raises(PlanError, match="matched by two plan patterns"):
        match_plan(model, {**plan_for(cfg, 2), "layers.0.attn.q_proj": "column"})
    with pytest.raises(PlanError, match="unknown tensor-parallel style"):
        match_plan(model, {"embed.word": "diagonal"})
    plan = plan_for(cfg, 2)
    del plan["layers.*.attn.v_proj"]
    with pytest.raises(PlanError, match="'layers.0.attn.v_proj' .* not covered"):
        apply_tensor_parallel(model, plan, ParallelGroups.build())
    with pytest.raises(PlanError, match="num_attention_heads \\(4\\) is not divisible"):
        plan_for(cfg, 3)
    with pytest.raises(PlanError, match="one must divide the other"):
        plan_for(ModelConfig(**{**BASE, "hidden_size": 48, "num_attention_heads": 6, "num_kv_heads": 3}), 2)
    with pytest.raises(PlanError, match="sequence parallelism needs"):
        apply_tensor_parallel(model, plan_for(cfg, 1), ParallelGroups.build(), sequence_parallel=True)


def test_plan_choices():
    mqa = make_cfg("parallel_mqa_swiglu_nobias_untied")
    p = plan_for(mqa, 4)
    assert p["layers.*.attn.k_proj"] == {"style": "replicated_kv", "kv_heads": 1, "head_dim": 8}
    assert p["layers.*.attn.o_proj"] == "row_partial" and p["layers.*.parallel_reduce"] == "reduce"
    assert p["lm_head"] == "vocab_head" and "layers.*.norm2" not in p
    gqa = make_cfg("parallel2norm_gqa_tied_rope")
    assert plan_for(gqa, 2)["layers.*.attn.k_proj"] == "column"
    assert plan_for(gqa, 4)["layers.*.attn.k_proj"]["style"] == "replicated_kv"
    seq = make_cfg("sequential_mha_gelu_learned_tied")
    assert plan_for(seq, 2)["layers.*.mlp.fc_out"] == "row" and "lm_head" not in plan_for(seq, 2)


def test_tp1_is_identity_without_process_group():
    cfg = make_cfg("parallel_mqa_swiglu_nobias_untied")
    torch.manual_seed(0)
    model = GPT(cfg)
    model.init_weights()
    x = torch.randint(0, 50, (1, 5))
    before = model(x)
    assert apply_tensor_parallel(model, plan_for(cfg, 1), ParallelGroups.build()) is model
    close(model(x), before, "tp1")


@pytest.mark.parametrize("tp", [2, 4])
def test_reshard_state_dicts_round_trip(tp):
    """Shard a model for every TP rank of a virtual layout (no processes): merging the shards gives back the full
    state dict, and splitting the full one gives each rank's shard (weights of every architecture case)."""
    for name in CASES:
        cfg = make_cfg(name)
        torch.manual_seed(0)
        full_model = GPT(cfg)
        full_model.init_weights()
        full = full_model.state_dict()
        spec = partition_spec(cfg, tp)
        assert set(spec) == set(full)
        shards = [apply_tensor_parallel(copy.deepcopy(full_model), plan_for(cfg, tp),
                                        ParallelGroups.virtual(tp=tp, rank=r)).state_dict() for r in range(tp)]
        merged = merge_tp_shards(shards, spec)
        for k in full:
            assert torch.equal(merged[k], full[k]), (name, k)
        for r in range(tp):
            mine = split_for_tp(full, spec, tp, r)
            for k in shards[r]:
                assert torch.equal(mine[k], shards[r][k]), (name, r, k)


def test_virtual_groups_plan_a_large_layout_without_memory():
    """Per-rank parameter count of a big config at TP 8 on the meta device; collectives are refused."""
    cfg = ModelConfig(num_layers=4, hidden_size=1024, num_attention_heads=16, num_kv_heads=1, vocab_size=50000,
                      activation="swiglu", ffn_hidden_size=4096, block="parallel", tie_embeddings=False)
    with torch.device("meta"):
        model = GPT(cfg)
    total = sum(p.numel() for p in model.parameters())
    model = apply_tensor_parallel(model, plan_for(cfg, 8), ParallelGroups.virtual(tp=8, rank=3))
    per_rank = sum(p.numel() for p in model.parameters())
    replicated = sum(p.numel() for p in model.parameters() if not getattr(p, "tensor_model_parallel", False))
    assert per_rank == (total - replicated) // 8 + replicated
    with pytest.raises(RuntimeError, match="cannot run collectives"):
        model.to_empty(device="cpu")(torch.zeros(1, 4, dtype=torch.long))
