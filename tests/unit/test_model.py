"""The single-device GPT: shapes, every architectural knob the presets use, causality, KV cache, init, meta builds
and the FLOPs formula. Each check compares against an independent computation written here."""

import math

import pytest
import torch
from torch import nn

from megatron_code.config import ConfigError
from megatron_code.model import GPT, count_parameters, flops_per_token
from megatron_code.model.norm import RMSNorm


def build(cfg, seed=0) -> GPT:
    model = GPT(cfg)
    model.init_weights(torch.Generator().manual_seed(seed))
    return model.eval()


def ids(cfg, b=2, t=12):
    return torch.randint(0, cfg.vocab_size, (b, t))


# --------------------------------------------------------------------------------------------- shapes and knobs
def test_forward_shapes(tiny_model_cfg):
    cfg = tiny_model_cfg()
    model = build(cfg)
    x = ids(cfg, 3, 10)
    logits, hidden = model(x, return_hidden=True)
    assert logits.shape == (3, 10, cfg.padded_vocab_size) == (3, 10, 256)
    assert hidden.shape == (3, 10, cfg.hidden_size)
    assert torch.equal(model(x), logits)


@pytest.mark.parametrize("vocab, multiple, padded", [(200, 128, 256), (256, 128, 256), (257, 128, 384),
                                                     (50257, 128, 50304), (1000, 1, 1000), (100, 64, 128)])
def test_padded_vocab_rows(tiny_model_cfg, vocab, multiple, padded):
    cfg = tiny_model_cfg(vocab_size=vocab, vocab_pad_multiple=multiple, tie_embeddings=False)
    assert cfg.padded_vocab_size == math.ceil(vocab / multiple) * multiple == padded
    with torch.device("meta"):
        model = GPT(cfg)
    assert model.embed.word.weight.shape == (padded, cfg.hidden_size)
    assert model.lm_head.weight.shape == (padded, cfg.hidden_size)
    assert cfg.vocab_size == vocab  # the true size stays recorded


def _manual_block(block, x, rope, parallel, shared):
    n1 = block.norm1(x)
    if parallel:
        n2 = n1 if shared else block.norm2(x)
        return x + block.attn(n1, rope) + block.mlp(n2)
    h = x + block.attn(n1, rope)
    return h + block.mlp(block.norm2(h))


@pytest.mark.parametrize("block, shared", [("sequential", True), ("parallel", True), ("parallel", False)])
def test_block_dataflow(tiny_model_cfg, block, shared):
    cfg = tiny_model_cfg(block=block, parallel_shared_norm=shared)
    model = build(cfg)
    with torch.no_grad():  # large random weights so each branch moves the output visibly
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    layer = model.layers[0]
    has_norm2 = not (block == "parallel" and shared)
    assert hasattr(layer, "norm2") == has_norm2
    x = torch.randn(2, 7, cfg.hidden_size)
    pos = torch.arange(7).expand(2, 7)
    rope = model.rope(pos, x.dtype)
    expected = _manual_block(layer, x, rope, block == "parallel", shared)
    torch.testing.assert_close(layer(x, rope), expected, rtol=1e-5, atol=1e-5)
    # And the other dataflow gives a different answer (the test can tell them apart).
    other = _manual_block(layer, x, rope, block != "parallel", shared) if has_norm2 else None
    if other is not None:
        assert (layer(x, rope) - other).abs().max() > 0.1


def test_block_counts_norms(tiny_model_cfg):
    def norms(**kw):
        with torch.device("meta"):
            m = GPT(tiny_model_cfg(**kw))
        return sum(1 for n, _ in m.named_modules() if n.endswith(("norm1", "norm2", "final_norm")))
    assert norms(block="sequential") == 2 * 2 + 1
    assert norms(block="parallel", parallel_shared_norm=True) == 2 + 1
    assert norms(block="parallel", parallel_shared_norm=False) == 2 * 2 + 1


@pytest.mark.parametrize("kv", [4, 2, 1])
def test_mha_gqa_mqa_projection_shapes(tiny_model_cfg, kv):
    cfg = tiny_model_cfg(num_kv_heads=kv)
    model = build(cfg)
    attn = model.layers[0].attn
    assert attn.q_proj.weight.shape == (4 * 16, 64)
    assert attn.k_proj.weight.shape == attn.v_proj.weight.shape == (kv * 16, 64)
    assert attn.o_proj.weight.shape == (64, 4 * 16)
    assert model(ids(cfg)).shape[-1] == 256


@pytest.mark.parametrize("kv", [2, 1])
def test_gqa_equals_mha_with_repeated_kv_heads(tiny_model_cfg, kv):
    """Query head h reads kv head h // (H / Hkv): an MHA model whose k/v heads are those copies is the same function."""
    gqa_cfg = tiny_model_cfg(num_kv_heads=kv)
    mha_cfg = tiny_model_cfg(num_kv_heads=4)
    gqa, mha = build(gqa_cfg, seed=1), build(mha_cfg, seed=2)
    g, d = 4 // kv, gqa_cfg.head_dim
    state = {}
    for name, p in gqa.state_dict().items():
        if any(f"attn.{n}_proj" in name for n in "kv"):
            rows = p.view(kv, d, *p.shape[1:]).repeat_interleave(g, dim=0)  # (H, D[, hidden])
            p = rows.reshape(4 * d, *p.shape[1:])
        state[name] = p
    mha.load_state_dict(state)
    x = ids(gqa_cfg)
    torch.testing.assert_close(mha(x), gqa(x), rtol=1e-5, atol=1e-5)
    # A wrong grouping (tile instead of interleave) is a different function, so the test can fail.
    if kv == 2:
        for name, p in gqa.state_dict().items():
            if any(f"attn.{n}_proj" in name for n in "kv"):
                state[name] = p.view(kv, d, *p.shape[1:]).repeat(g, *([1] * p.dim())).reshape(4 * d, *p.shape[1:])
        mha.load_state_dict(state)
        assert (mha(x) - gqa(x)).abs().max() > 1e-4


def test_head_dim_independent_of_hidden(tiny_model_cfg):
    cfg = tiny_model_cfg(hidden_size=48, num_attention_heads=4, head_dim=24, rotary_dims=8)
    model = build(cfg)
    attn = model.layers[0].attn
    assert attn.q_proj.weight.shape == (96, 48) and attn.o_proj.weight.shape == (48, 96)
    assert model(ids(cfg)).shape == (2, 12, 256)


def test_learned_positions(tiny_model_cfg):
    cfg = tiny_model_cfg(position_embedding="learned")
    model = build(cfg)
    assert model.embed.position.weight.shape == (cfg.max_position_embeddings, cfg.hidden_size)
    assert model.rope(torch.zeros(1, 3, dtype=torch.long), torch.float32) is None
    x = ids(cfg, 1, 8)
    pos = torch.arange(8)[None]
    assert (model(x, position_ids=pos + 3) - model(x, position_ids=pos)).abs().max() > 1e-3


def test_rope_positions_are_relative(tiny_model_cfg):
    cfg = tiny_model_cfg(position_embedding="rope", rotary_percent=0.5)
    model = build(cfg)
    assert not hasattr(model.embed, "position")
    x = ids(cfg, 1, 8)
    pos = torch.arange(8)[None]
    # Shifting every position by the same amount changes no attention score: same logits.
    torch.testing.assert_close(model(x, position_ids=pos + 5), model(x, position_ids=pos), rtol=1e-4, atol=1e-4)
    # Changing relative positions does change them.
    assert (model(x, position_ids=pos * 2) - model(x, position_ids=pos)).abs().max() > 1e-4


def test_no_positions(tiny_model_cfg):
    cfg = tiny_model_cfg(position_embedding="none")
    model = build(cfg)
    assert not hasattr(model.embed, "position") and model.rope(torch.zeros(1, 2).long(), torch.float32) is None
    x = ids(cfg, 1, 8)
    torch.testing.assert_close(model(x, position_ids=torch.arange(8)[None] * 7), model(x))
    # Without positions, causal attention over a repeated token gives the same output at every position.
    same = torch.full((1, 6), 5)
    out = model(same)
    torch.testing.assert_close(out[0, 1:], out[0, :1].expand(5, -1), rtol=1e-5, atol=1e-5)


def test_rmsnorm_matches_formula(tiny_model_cfg):
    cfg = tiny_model_cfg(norm="rmsnorm", norm_eps=1e-6)
    model = build(cfg)
    norm = model.layers[0].norm1
    assert isinstance(norm, RMSNorm) and [n for n, _ in norm.named_parameters()] == ["weight"]
    assert torch.equal(norm.weight, torch.ones(cfg.hidden_size))  # init_weights sets it (it starts empty)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(cfg.hidden_size))
    x = torch.randn(3, 5, cfg.hidden_size) * 4 + 1
    expected = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected, rtol=1e-5, atol=1e-5)
    xb = x.bfloat16()
    assert norm(xb).dtype == torch.bfloat16


def test_layernorm_with_and_without_bias(tiny_model_cfg):
    with_bias = build(tiny_model_cfg(norm="layernorm", norm_bias=True)).layers[0].norm1
    no_bias = build(tiny_model_cfg(norm="layernorm", norm_bias=False)).layers[0].norm1
    assert isinstance(with_bias, nn.LayerNorm) and with_bias.bias is not None
    assert isinstance(no_bias, nn.LayerNorm) and no_bias.bias is None
    assert [n for n, _ in no_bias.named_parameters()] == ["weight"]
    x = torch.randn(2, 64)
    expected = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)
    torch.testing.assert_close(no_bias(x), expected, rtol=1e-5, atol=1e-5)


def test_no_bias_anywhere(tiny_model_cfg):
    cfg = tiny_model_cfg(bias=False, norm_bias=False, activation="swiglu", block="parallel")
    names = [n for n, _ in build(cfg).named_parameters()]
    assert not [n for n in names if n.endswith("bias")]


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "swiglu"])
def test_mlp_activations(tiny_model_cfg, activation):
    cfg = tiny_model_cfg(activation=activation)
    mlp = build(cfg).layers[0].mlp
    x = torch.randn(2, 3, cfg.hidden_size)
    if activation == "swiglu":
        gate = x @ mlp.gate_proj.weight.T + mlp.gate_proj.bias
        up = x @ mlp.up_proj.weight.T + mlp.up_proj.bias
        h = gate * torch.sigmoid(gate) * up
        expected = h @ mlp.down_proj.weight.T + mlp.down_proj.bias
        assert mlp.gate_proj.weight.shape == (cfg.ffn_hidden_size, cfg.hidden_size)
    else:
        a = x @ mlp.fc_in.weight.T + mlp.fc_in.bias
        if activation == "gelu":
            g = 0.5 * a * (1 + torch.erf(a / math.sqrt(2)))
        else:
            g = 0.5 * a * (1 + torch.tanh(math.sqrt(2 / math.pi) * (a + 0.044715 * a ** 3)))
        expected = g @ mlp.fc_out.weight.T + mlp.fc_out.bias
    torch.testing.assert_close(mlp(x), expected, rtol=1e-5, atol=1e-6)


def test_gelu_exact_and_tanh_differ(tiny_model_cfg):
    exact = build(tiny_model_cfg(activation="gelu"))
    approx = build(tiny_model_cfg(activation="gelu_tanh"))
    x = ids(exact.cfg)
    assert (exact(x) - approx(x)).abs().max() > 0


def test_tied_head(tiny_model_cfg):
    cfg = tiny_model_cfg(tie_embeddings=True)
    model = build(cfg)
    assert not hasattr(model, "lm_head") and model.output_weight() is model.embed.word.weight
    logits, hidden = model(ids(cfg), return_hidden=True)
    torch.testing.assert_close(logits, hidden @ model.embed.word.weight.T)


@pytest.mark.parametrize("output_bias", [False, True])
def test_untied_head(tiny_model_cfg, output_bias):
    cfg = tiny_model_cfg(tie_embeddings=False, output_bias=output_bias)
    model = build(cfg)
    assert model.output_weight() is model.lm_head.weight
    assert model.lm_head.weight.data_ptr() != model.embed.word.weight.data_ptr()
    assert (model.lm_head.bias is not None) == output_bias
    if output_bias:
        assert torch.equal(model.lm_head.bias, torch.zeros(cfg.padded_vocab_size))
        with torch.no_grad():
            model.lm_head.bias.normal_()
    logits, hidden = model(ids(cfg), return_hidden=True)
    expected = hidden @ model.lm_head.weight.T + (model.lm_head.bias if output_bias else 0)
    torch.testing.assert_close(logits, expected)


def test_output_bias_needs_untied_head(tiny_model_cfg):
    with pytest.raises(ConfigError, match="--untie-embeddings-and-output-weights"):
        GPT(tiny_model_cfg(tie_embeddings=True, output_bias=True))


def test_dropout_only_in_training(tiny_model_cfg):
    drop = tiny_model_cfg(attention_dropout=0.3, hidden_dropout=0.3, embedding_dropout=0.3)
    model = build(drop)
    plain = GPT(tiny_model_cfg())
    plain.load_state_dict(model.state_dict())
    plain.eval()
    x = ids(drop)
    model.eval()
    torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)
    model.train()
    a, b = model(x), model(x)
    assert (a - b).abs().max() > 1e-3
    assert (a - plain(x)).abs().max() > 1e-3


# --------------------------------------------------------------------------------------------- causality and cache
@pytest.mark.parametrize("kw", [dict(), dict(position_embedding="learned"), dict(block="parallel", num_kv_heads=1)])
def test_causality(tiny_model_cfg, kw):
    cfg = tiny_model_cfg(**kw)
    model = build(cfg)
    x = ids(cfg, 2, 16)
    base = model(x)
    for t in (0, 5, 15):
        y = x.clone()
        y[:, t] = (y[:, t] + 1) % cfg.vocab_size
        out = model(y)
        torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=1e-6)
        assert (out[:, t] - base[:, t]).abs().max() > 1e-4


@pytest.mark.parametrize("kw", [dict(), dict(position_embedding="learned", num_kv_heads=2),
                                dict(block="parallel", num_kv_heads=1, rotary_percent=0.5, norm="rmsnorm",
                                     activation="swiglu")])
def test_kv_cache_chunks_equal_full_forward(tiny_model_cfg, kw):
    cfg = tiny_model_cfg(**kw)
    model = build(cfg)
    x = ids(cfg, 2, 12)
    full = model(x)
    cache = model.new_cache(batch=2, max_len=16)
    pieces, start = [], 0
    for size in (5, 1, 1, 4, 1):
        pieces.append(model(x[:, start:start + size], cache=cache))
        start += size
        assert cache.length == start
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="KV cache full"):
        model(x[:, :5], cache=cache)


# --------------------------------------------------------------------------------------------- init and meta
def test_init_statistics(tiny_model_cfg):
    cfg = tiny_model_cfg(num_layers=4, hidden_size=256, num_attention_heads=4, ffn_hidden_size=1024,
                         tie_embeddings=False, output_bias=True, position_embedding="learned", init_std=0.02)
    model = GPT(cfg)
    with torch.no_grad():  # make the init observable: everything starts far from its target
        for p in model.parameters():
            p.fill_(5.0)
    model.init_weights(torch.Generator().manual_seed(0))
    out_std = 0.02 / math.sqrt(2 * 4)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert torch.equal(p, torch.zeros_like(p)), name
        elif "norm" in name:
            assert torch.equal(p, torch.ones_like(p)), name
        else:
            target = out_std if name.rsplit(".", 2)[-2] in ("o_proj", "fc_out", "down_proj") else 0.02
            assert abs(p.mean().item()) < 3 * target / math.sqrt(p.numel()) + 1e-6, name
            assert abs(p.std().item() / target - 1) < 0.05, (name, p.std().item(), target)


def test_init_is_reproducible_and_unscaled_option(tiny_model_cfg):
    a, b = build(tiny_model_cfg(), seed=3), build(tiny_model_cfg(), seed=3)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n
    cfg = tiny_model_cfg(num_layers=8, hidden_size=256, ffn_hidden_size=256, scaled_init=False)
    std = build(cfg).layers[0].attn.o_proj.weight.std().item()
    assert abs(std / 0.02 - 1) < 0.05


def test_meta_build_has_no_storage(tiny_model_cfg):
    cfg = tiny_model_cfg(num_layers=3, hidden_size=4096, num_attention_heads=32, ffn_hidden_size=16384,
                         vocab_size=50000)
    with torch.device("meta"):
        model = GPT(cfg)
        model.init_weights()
    params = list(model.parameters())
    assert params and all(p.is_meta for p in params)
    assert count_parameters(cfg) == model.num_parameters() > 600_000_000
    x = torch.zeros(1, 4, dtype=torch.long, device="meta")
    assert model(x).shape == (1, 4, cfg.padded_vocab_size)


def test_stable_parameter_names(tiny_model_cfg):
    names = {n for n, _ in build(tiny_model_cfg(tie_embeddings=False, activation="swiglu")).named_parameters()}
    for expected in ("embed.word.weight", "layers.0.attn.q_proj.weight", "layers.1.attn.o_proj.weight",
                     "layers.0.mlp.gate_proj.weight", "layers.0.mlp.up_proj.weight", "layers.0.mlp.down_proj.weight",
                     "layers.0.norm1.weight", "layers.0.norm2.weight", "final_norm.weight", "lm_head.weight"):
        assert expected in names


# --------------------------------------------------------------------------------------------- FLOPs
@pytest.mark.parametrize("kw", [dict(), dict(tie_embeddings=False), dict(tie_embeddings=False, output_bias=True),
                                dict(position_embedding="learned")])
def test_flops_per_token_by_hand(tiny_model_cfg, kw):
    # L=2, h=64, 4 heads of 16, ffn 128, padded vocab 256, biases, LayerNorm with bias, sequential, seq 32.
    cfg = tiny_model_cfg(**kw)
    h, f, v, L, T = 64, 128, 256, 2, 32
    attn = 4 * h * h + 4 * h          # q, k, v, o weights + biases
    mlp = 2 * h * f + f + h           # fc_in, fc_out + biases
    norms = 2 * 2 * h                 # two LayerNorms (weight + bias)
    n = L * (attn + mlp + norms) + 2 * h + v * h  # + final norm + the logits matmul (tied or lm_head)
    if kw.get("output_bias"):
        n += v
    expected = 6 * n + 12 * L * 4 * 16 * T  # PaLM appendix B: 6N + 12 L H Q T
    assert flops_per_token(cfg, T) == expected


def test_activation_checkpointing_keeps_names_outputs_and_gradients(tiny_model_cfg):
    """Recomputing blocks in backward changes neither the state dict keys nor the loss or gradients."""
    import copy

    from megatron_code.model import GPT
    from megatron_code.parallel.activation_checkpoint import apply_activation_checkpointing

    cfg = tiny_model_cfg(num_layers=3)
    ref = GPT(cfg)
    ref.init_weights(torch.Generator().manual_seed(0))
    ck = copy.deepcopy(ref)
    assert apply_activation_checkpointing(ck, 1) == 3
    assert list(ck.state_dict()) == list(ref.state_dict())
    x = torch.randint(0, cfg.vocab_size, (2, 16))
    losses = []
    for m in (ref, ck):
        m.train()
        loss = m(x).float().logsumexp(-1).mean()
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == losses[1]
    for (n, a), (_, b) in zip(ref.named_parameters(), ck.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-6, msg=n)
