"""Model knobs of the seeds' recipes: ReLU/ELU MLPs (the study's Table 3.2 ablation), the word embedding's own
init std and PaLM's 1/sqrt(d) logit scaling, each against a direct reference."""

import pytest
import torch
import torch.nn.functional as F

from megatron_code.config import ModelConfig
from megatron_code.config.base import ConfigError
from megatron_code.model import GPT


def tiny(**kw) -> ModelConfig:
    base = dict(num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=64, vocab_size=100,
                max_position_embeddings=32, position_embedding="rope")
    return ModelConfig(**{**base, **kw})


def build(cfg: ModelConfig, seed: int = 0) -> GPT:
    model = GPT(cfg)
    model.init_weights(torch.Generator().manual_seed(seed))
    return model.double()


@pytest.mark.parametrize("act, ref", [("relu", F.relu), ("elu", F.elu), ("gelu", F.gelu),
                                      ("gelu_tanh", lambda x: F.gelu(x, approximate="tanh"))])
def test_mlp_activation_is_the_reference(act, ref):
    mlp = build(tiny(activation=act)).layers[0].mlp
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    assert torch.equal(mlp(x), mlp.fc_out(ref(mlp.fc_in(x))))


def test_unknown_activation_is_refused():
    with pytest.raises(ConfigError, match="model.activation must be one of"):
        tiny(activation="tanh").validate()


def test_embedding_init_std_applies_to_the_word_embedding_only():
    model = GPT(tiny(embedding_init_std=1.0, vocab_size=4000, hidden_size=64))
    model.init_weights(torch.Generator().manual_seed(0))
    assert model.embed.word.weight.std().item() == pytest.approx(1.0, rel=0.02)
    assert model.layers[0].attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    same = GPT(tiny(vocab_size=4000, hidden_size=64))
    same.init_weights(torch.Generator().manual_seed(0))
    # the same draws, rescaled: std is the only change
    assert torch.allclose(model.embed.word.weight, same.embed.word.weight / 0.02, rtol=1e-5, atol=1e-6)
    assert torch.equal(model.layers[0].attn.q_proj.weight, same.layers[0].attn.q_proj.weight)


def test_logit_scaling_divides_logits_by_sqrt_d_on_every_path():
    plain = build(tiny())
    scaled = build(tiny(output_logit_scaling=True))
    ids = torch.randint(0, 100, (2, 7))
    want = plain(ids) / 32 ** 0.5
    assert torch.allclose(scaled(ids), want, rtol=1e-12, atol=1e-12)
    # the fused head + loss kernel sees the same logits: loss and gradients equal the unfused reference
    labels = torch.randint(0, 100, (2, 7))
    weights = torch.full((2, 7), 1 / 14, dtype=torch.float64)
    fused = scaled(ids, labels=labels, loss_weights=weights)
    fused.backward()
    g_fused = [p.grad.clone() for p in scaled.parameters()]
    scaled.zero_grad()
    ref = F.cross_entropy(scaled(ids).flatten(0, 1), labels.flatten())
    ref.backward()
    assert fused.item() == pytest.approx(ref.item(), rel=1e-10)
    for a, b in zip(g_fused, (p.grad for p in scaled.parameters())):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-12)


def test_logit_scaling_gradcheck():
    model = build(tiny(output_logit_scaling=True, num_layers=1, hidden_size=8, num_attention_heads=2,
                       ffn_hidden_size=8, vocab_size=16))
    h = torch.randn(1, 3, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: model.logits(model.final_norm(x)), (h,))


def test_logit_scaling_exports_only_where_a_target_expresses_it():
    from megatron_code.convert.targets import target_problems
    cfg = tiny(output_logit_scaling=True)
    assert any("logit_scale expresses it" in p for p in target_problems(cfg, "GPTNeoXForCausalLM"))
    assert not [p for p in target_problems(cfg, "MegatronCodeForCausalLM") if "logit" in p]  # our exported code
    palm_like = tiny(output_logit_scaling=True, norm_bias=False, activation="swiglu", block="parallel", bias=False,
                     num_kv_heads=1)
    assert not [p for p in target_problems(palm_like, "CohereForCausalLM") if "logit" in p]


# --- structure dropout: LayerDrop and DropHead ------------------------------------------------------------------

def test_layerdrop_off_in_eval_and_all_dropped_is_the_identity_stack():
    base = build(tiny())
    drop = build(tiny(layerdrop=0.999999))
    ids = torch.randint(0, 100, (2, 7))
    assert torch.equal(drop.eval()(ids), base.eval()(ids))
    drop.train()
    torch.manual_seed(0)
    hidden = drop.embed(ids, drop.default_position_ids(ids))
    want = drop.logits(drop.final_norm(hidden))  # every block skipped: embeddings straight to the head
    assert torch.allclose(drop(ids), want, rtol=1e-12, atol=1e-12)
    drop(ids).sum().backward()  # dropped blocks still give every parameter a (zero) gradient
    assert all(p.grad is not None and not p.grad.any() for p in drop.layers.parameters())


def test_layerdrop_rate():
    model = build(tiny(layerdrop=0.3, num_layers=1)).train()
    block = model.layers[0]
    x = torch.randn(1, 3, 32, dtype=torch.float64)
    torch.manual_seed(1)
    kept = sum(not torch.equal(block(x), x) for _ in range(2000))
    assert 0.66 < kept / 2000 < 0.74


def test_drophead_masks_whole_heads_per_sample_and_rescales():
    p = 0.5
    attn = build(tiny(drophead=p)).layers[0].attn.train()
    x = torch.randn(3, 5, 32, dtype=torch.float64)
    torch.manual_seed(4)
    got = attn(x)
    torch.manual_seed(4)
    keep = (torch.rand(3, 4, 1, 1) >= p).double()
    attn.eval()
    q, k, v = (proj(x).view(3, 5, 4, 8).transpose(1, 2) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True) * keep / (1 - p)
    want = attn.o_proj(ref.transpose(1, 2).reshape(3, 5, 32))
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)
    assert 0 < keep.sum() < keep.numel()


# --- T5 relative position bias ----------------------------------------------------------------------------------

def test_t5_buckets_equal_transformers_t5():
    t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    from megatron_code.model.attention import t5_bucket
    rel = torch.arange(-600, 1)[None, :].repeat(1, 1)
    for buckets, dist in ((32, 128), (16, 64), (8, 20)):
        want = t5.T5Attention._relative_position_bucket(rel, bidirectional=False, num_buckets=buckets,
                                                        max_distance=dist)
        assert torch.equal(t5_bucket(rel, buckets, dist), want)


def test_t5_bias_attention_equals_direct_scores_and_cache_decoding():
    model = build(tiny(position_embedding="t5", t5_buckets=8, t5_max_distance=16)).eval()
    with torch.no_grad():
        for layer in model.layers:
            layer.attn.rel_bias.weight.normal_(0, 1.0)
    attn = model.layers[0].attn
    x = torch.randn(2, 21, 32, dtype=torch.float64)
    from megatron_code.model.attention import t5_bucket
    q, k, v = (proj(x).view(2, 21, 4, 8).transpose(1, 2) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    pos = torch.arange(21)
    bias = attn.rel_bias(t5_bucket(pos[None, :] - pos[:, None], 8, 16)).permute(2, 0, 1)  # (H, T, T)
    scores = q @ k.transpose(-1, -2) / 8 ** 0.5 + bias
    scores = scores.masked_fill(~torch.ones(21, 21, dtype=torch.bool).tril(), float("-inf"))
    want = attn.o_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 21, 32))
    assert torch.allclose(attn(x), want, rtol=1e-10, atol=1e-12)
    # KV-cache decoding sees the same distances as the full forward
    ids = torch.randint(0, 100, (2, 9))
    full = model(ids)
    cache = model.new_cache(2, 9)
    steps = [model(ids[:, :5], cache=cache)] + [model(ids[:, i:i + 1], cache=cache) for i in range(5, 9)]
    assert torch.allclose(torch.cat(steps, 1), full, rtol=1e-9, atol=1e-10)


def test_t5_bias_is_sharded_by_heads_under_tensor_parallelism():
    """The plan splits each layer's bias table by heads (TP2 = TP1: tests/distributed/test_t5_bias_tp.py); the
    partition spec that merges checkpoints knows it."""
    from megatron_code.config.cli import parse_args
    from megatron_code.parallel.tensor_parallel import partition_spec
    job = parse_args(["--model.position_embedding", "t5", "--tensor-model-parallel-size", "2", "--mock-data",
                      "--model.vocab_size", "64", "--preset", "tiny"]).job
    spec = partition_spec(job.model, 2)
    assert spec["layers.0.attn.rel_bias.weight"] == 1
