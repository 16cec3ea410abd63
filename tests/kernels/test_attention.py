"""attention() (the SDPA path on CPU) equals attention_reference: MHA/GQA/MQA, causal full and KV-cache chunks
(Tq < Tk, bottom-right aligned), with and without a bool mask; fp32 tightly, bf16 loosely. The reference itself is
checked against a loop written here."""

import math

import pytest
import torch

from megatron_code.kernels import attention
from megatron_code.kernels.attention.reference import attention_reference

HQ = 4


def qkv(b, hkv, tq, tk, d=16, dtype=torch.float32):
    q = torch.randn(b, HQ, tq, d)
    k = torch.randn(b, hkv, tk, d)
    v = torch.randn(b, hkv, tk, d)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def random_mask(b, tq, tk):
    """(B, 1, Tq, Tk) bool, True = attend; every query keeps key 0 so no row is empty."""
    m = torch.rand(b, 1, tq, tk) > 0.4
    m[..., 0] = True
    return m


def loop_reference(q, k, v, causal, mask):
    """Per (batch, head, query) softmax written out: the semantics the docstring states."""
    b, hq, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    out = torch.zeros(b, hq, tq, d, dtype=torch.float64)
    for bi in range(b):
        for h in range(hq):
            kh = h // (hq // hkv)
            for i in range(tq):
                keep = torch.ones(tk, dtype=torch.bool)
                if causal:
                    keep &= torch.arange(tk) <= i + tk - tq
                if mask is not None:
                    keep &= mask.expand(b, hq, tq, tk)[bi, h, i]
                s = (k[bi, kh].double() @ q[bi, h, i].double()) / math.sqrt(d)
                s = s.masked_fill(~keep, float("-inf"))
                out[bi, h, i] = torch.softmax(s, 0) @ v[bi, kh].double()
    return out


CASES = [(hkv, tq, tk, causal, masked)
         for hkv in (4, 2, 1)                   # MHA, GQA, MQA
         for tq, tk in ((9, 9), (3, 9), (1, 9))  # full, a KV-cache chunk, one decode step
         for causal in (True, False)
         for masked in (False, True)]


@pytest.mark.parametrize("hkv, tq, tk, causal, masked", CASES)
def test_sdpa_path_equals_reference_fp32(hkv, tq, tk, causal, masked):
    q, k, v = qkv(2, hkv, tq, tk)
    mask = random_mask(2, tq, tk) if masked else None
    ref = attention_reference(q, k, v, causal=causal, mask=mask)
    out = attention(q, k, v, causal=causal, mask=mask)
    assert out.shape == (2, HQ, tq, 16) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hkv, tq, tk, causal, masked", [c for c in CASES if c[1] != 1 and c[0] != 2])
def test_reference_equals_loop(hkv, tq, tk, causal, masked):
    q, k, v = qkv(1, hkv, tq, tk)
    mask = random_mask(1, tq, tk) if masked else None
    ref = attention_reference(q, k, v, causal=causal, mask=mask)
    torch.testing.assert_close(ref.double(), loop_reference(q, k, v, causal, mask), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hkv", [4, 2, 1])
@pytest.mark.parametrize("tq", [8, 3])
def test_sdpa_path_bf16_loosely(hkv, tq):
    q, k, v = qkv(2, hkv, tq, 8, dtype=torch.bfloat16)
    ref = attention_reference(q, k, v, causal=True)
    out = attention(q, k, v, causal=True)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)


def test_causal_chunk_is_bottom_right_aligned():
    # The last query of a chunk sees every key; the first sees all but the last tq-1 keys.
    q, k, v = qkv(1, 4, 3, 7)
    full = attention(q, k, v, causal=False)
    chunk = attention(q, k, v, causal=True)
    torch.testing.assert_close(chunk[:, :, -1], full[:, :, -1], rtol=1e-5, atol=1e-5)
    first = attention(q[:, :, :1], k[:, :, :5], v[:, :, :5], causal=False)
    torch.testing.assert_close(chunk[:, :, 0], first[:, :, 0], rtol=1e-5, atol=1e-5)


def test_chunks_equal_full_causal():
    q, k, v = qkv(2, 2, 10, 10)
    full = attention(q, k, v, causal=True)
    parts, start = [], 0
    for size in (4, 1, 5):
        end = start + size
        parts.append(attention(q[:, :, start:end], k[:, :, :end], v[:, :, :end], causal=True))
        start = end
    torch.testing.assert_close(torch.cat(parts, dim=2), full, rtol=1e-5, atol=1e-5)


def test_impl_reference_and_dropout():
    q, k, v = qkv(1, 2, 6, 6)
    torch.testing.assert_close(attention(q, k, v, causal=True, impl="reference"),
                               attention_reference(q, k, v, causal=True))
    torch.manual_seed(0)
    a = attention(q, k, v, causal=True, dropout_p=0.5)
    b = attention(q, k, v, causal=True, dropout_p=0.5)
    assert (a - b).abs().max() > 1e-3  # dropout is live when asked for
    assert torch.equal(attention(q, k, v, causal=True, dropout_p=0.0), attention(q, k, v, causal=True))


def test_gradients_match_reference():
    q, k, v = qkv(1, 2, 5, 7)
    mask = random_mask(1, 5, 7)
    grads = []
    for fn in (attention, attention_reference):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        fn(*leaves, causal=True, mask=mask).square().sum().backward()
        grads.append([t.grad for t in leaves])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
