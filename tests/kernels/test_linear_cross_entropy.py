"""linear_cross_entropy (fused, chunked head + loss) equals linear_cross_entropy_reference (materialised logits):
the value and the gradients of hidden, weight and bias, for fp32/bf16/float64, with and without bias, chunks that
do and do not divide N, zero and uneven weights, and an upstream gradient other than 1. The reference is checked
against a log-softmax written here, and the GPT model's fused loss against the trainer's unfused causal_lm_loss."""

import pytest
import torch

from megatron_code.config import ModelConfig
from megatron_code.kernels.linear_cross_entropy import (default_block_rows, default_chunk_rows,
                                                        linear_cross_entropy, linear_cross_entropy_reference)
from megatron_code.model import GPT
from megatron_code.training.losses import causal_lm_loss


def inputs(n, h, v, dtype, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(dtype)
    weight = (torch.randn(v, h, generator=g) * 0.3).to(dtype)
    b = (torch.randn(v, generator=g) * 0.1).to(dtype) if bias else None
    labels = torch.randint(0, v, (n,), generator=g)
    weights = torch.rand(n, generator=g)
    weights[::3] = 0.0  # masked positions
    return hidden, weight, b, labels, weights / weights.sum()


def grads(fn, hidden, weight, bias, labels, weights, upstream=1.0, **kw):
    leaves = [t.clone().requires_grad_() if t is not None else None for t in (hidden, weight, bias)]
    loss = fn(leaves[0], leaves[1], leaves[2], labels, weights, **kw)
    (loss * upstream).backward()
    return loss.detach(), [t.grad if t is not None else None for t in leaves]


def test_reference_is_weighted_cross_entropy():
    hidden, weight, bias, labels, weights = inputs(10, 6, 11, torch.float64)
    logits = hidden @ weight.t() + bias
    nll = -(logits - logits.logsumexp(-1, keepdim=True)).gather(1, labels[:, None]).squeeze(1)
    expect = (nll * weights.double()).sum()
    assert torch.allclose(linear_cross_entropy_reference(hidden, weight, bias, labels, weights), expect)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("chunk,block", [(1, None), (7, None), (16, 10), (1000, 1000), (4, 37), (5, 1)])
def test_fused_equals_reference(dtype, tol, bias, chunk, block):
    args = inputs(37, 16, 50, dtype, bias)
    ref_loss, ref_grads = grads(linear_cross_entropy_reference, *args, upstream=0.37)
    loss, got = grads(linear_cross_entropy, *args, upstream=0.37, chunk_rows=chunk, block_rows=block)
    assert loss.dtype == ref_loss.dtype
    assert torch.allclose(loss, ref_loss, rtol=1e-6 if dtype != torch.bfloat16 else 1e-5, atol=0)
    for name, a, b in zip(("hidden", "weight", "bias"), got, ref_grads):
        if b is None:
            assert a is None
            continue
        assert a.dtype == b.dtype, name
        scale = b.float().abs().max()
        assert (a.float() - b.float()).abs().max() <= tol * scale, name


def test_gradcheck_float64():
    hidden, weight, bias, labels, weights = inputs(9, 5, 13, torch.float64)
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    for block in (None, 4):
        assert torch.autograd.gradcheck(
            lambda h, w, b: linear_cross_entropy(h, w, b, labels, weights, chunk_rows=3, block_rows=block), leaves)


def test_no_grad_and_frozen_weight():
    hidden, weight, bias, labels, weights = inputs(12, 8, 20, torch.float32)
    with torch.no_grad():
        a = linear_cross_entropy(hidden, weight, bias, labels, weights, chunk_rows=5)
    assert torch.allclose(a, linear_cross_entropy_reference(hidden, weight, bias, labels, weights))
    h = hidden.clone().requires_grad_()  # only the input needs a gradient (e.g. a frozen head)
    linear_cross_entropy(h, weight, bias, labels, weights, chunk_rows=5).backward()
    h2 = hidden.clone().requires_grad_()
    linear_cross_entropy_reference(h2, weight, bias, labels, weights).backward()
    assert torch.allclose(h.grad, h2.grad, rtol=1e-5, atol=1e-7)


def test_zero_weights_give_zero_loss_and_grads():
    hidden, weight, bias, labels, _ = inputs(8, 4, 9, torch.float32)
    loss, (gh, gw, gb) = grads(linear_cross_entropy, hidden, weight, bias, labels, torch.zeros(8), chunk_rows=3)
    assert float(loss) == 0.0 and not gh.any() and not gw.any() and not gb.any()


def test_fp16_uses_the_reference_path():
    # Unscaled d z would underflow in fp16; "auto" must score fp16 through the reference (identical result).
    args = inputs(16, 8, 30, torch.float16)
    assert torch.equal(linear_cross_entropy(*args), linear_cross_entropy_reference(*args))


def test_shape_errors_name_the_contract():
    hidden, weight, bias, labels, weights = inputs(6, 4, 9, torch.float32)
    with pytest.raises(ValueError, match="hidden"):
        linear_cross_entropy(hidden[:, :3], weight, bias, labels, weights)
    with pytest.raises(ValueError, match="labels and weights"):
        linear_cross_entropy(hidden, weight, bias, labels[:5], weights)
    with pytest.raises(ValueError, match="impl"):
        linear_cross_entropy(hidden, weight, bias, labels, weights, impl="triton")


def test_default_sizes():
    assert default_chunk_rows(8192) == 256  # 8 MB of float32 logits
    assert default_chunk_rows(256_000) == 16  # floor
    assert default_chunk_rows(100) == 4096  # cap
    assert default_block_rows(8192, 2) == 65536  # 1 GiB of bf16 logits: one block for any usual micro batch
    assert default_block_rows(256_000, 2) == 2097  # PaLM's vocabulary: 2,097 rows a block
    assert default_block_rows(10 ** 9, 4) == 256  # floor


@pytest.mark.parametrize("tied,dtype", [(True, torch.float32), (False, torch.float32), (False, torch.bfloat16)])
def test_gpt_fused_loss_equals_logits_then_causal_lm_loss(tied, dtype):
    cfg = ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=64, vocab_size=96,
                      max_position_embeddings=16, tie_embeddings=tied, bias=True)
    cfg.validate()
    torch.manual_seed(0)
    model = GPT(cfg)
    model.init_weights(torch.Generator().manual_seed(1))
    model.to(dtype)
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, 96, (3, 13), generator=g)
    mask = (torch.rand(3, 12, generator=g) > 0.3).float()
    x, y = tokens[:, :-1], tokens[:, 1:]

    model.zero_grad()
    ref = causal_lm_loss(model(x), y, mask)
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    got = model(x, labels=y, loss_weights=mask / mask.sum())
    got.backward()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(got, ref, rtol=tol, atol=0)
    for n, p in model.named_parameters():
        scale = ref_grads[n].float().abs().max().clamp(min=1e-12)
        assert (p.grad.float() - ref_grads[n].float()).abs().max() <= tol * scale, n
    with pytest.raises(ValueError, match="loss_weights"):
        model(x, labels=y)
