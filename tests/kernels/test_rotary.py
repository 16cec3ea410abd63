"""rotary() (the fused autograd function) equals rotary_reference: outputs bitwise (same arithmetic), input
gradients to rounding, for full and partial rotary, batch-broadcast cos/sin, fp32 and bf16. The reference itself is
checked against a per-pair rotation written here."""

import pytest
import torch

from megatron_code.kernels.rotary import rotary, rotary_reference
from megatron_code.model.rope import rotary_cos_sin


def inputs(b, t, h, d, r, dtype, cos_batch=None):
    g = torch.Generator().manual_seed(b * 1000 + r)
    x = torch.randn(b, t, h, d, generator=g).to(dtype)
    pos = torch.arange(t).unsqueeze(0).expand(cos_batch or b, t) + 3
    cos, sin = rotary_cos_sin(pos, r, 10000.0, dtype)
    return x, cos, sin


def pair_loop(x, cos, sin):
    """Rotate each pair (i, i + r/2) by its angle, in float64: the definition."""
    r = cos.shape[-1]
    out = x.double().clone()
    xd, c, s = x.double(), cos.double(), sin.double()
    for i in range(r // 2):
        a, b = xd[..., i], xd[..., i + r // 2]
        out[..., i] = a * c[..., 0, i, None] - b * s[..., 0, i, None]
        out[..., i + r // 2] = b * c[..., 0, i + r // 2, None] + a * s[..., 0, i + r // 2, None]
    return out


@pytest.mark.parametrize("d,r", [(16, 16), (32, 16), (32, 8), (24, 12)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cos_batch", [None, 1])
def test_fused_equals_reference(d, r, dtype, cos_batch):
    x, cos, sin = inputs(2, 7, 3, d, r, dtype, cos_batch)
    xa = x.clone().requires_grad_()
    xb = x.clone().requires_grad_()
    out = rotary(xa, cos, sin)
    ref = rotary_reference(xb, cos, sin)
    assert out.shape == ref.shape and out.dtype == ref.dtype and out.is_contiguous()
    assert torch.equal(out, ref)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(dtype)
    out.backward(grad)
    ref.backward(grad)
    tol = dict(atol=1e-6, rtol=1e-6) if dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(xa.grad, xb.grad, **tol)


def test_reference_is_pairwise_rotation_and_passes_the_rest():
    x, cos, sin = inputs(2, 5, 2, 16, 8, torch.float32)
    out = rotary_reference(x, cos, sin)
    torch.testing.assert_close(out[..., :8].double(), pair_loop(x[..., :8], cos, sin), atol=1e-6, rtol=1e-6)
    assert torch.equal(out[..., 8:], x[..., 8:])


def test_gradient_is_the_inverse_rotation():
    """Rotations are orthogonal: backward of a unit upstream gradient through the rotated dims is the transpose."""
    x, cos, sin = inputs(1, 4, 1, 8, 8, torch.float64)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: rotary(t, cos, sin), (x,))


def test_trainable_cos_sin_use_the_reference_path():
    x, cos, sin = inputs(1, 4, 2, 8, 8, torch.float32)
    cos = cos.clone().requires_grad_()
    rotary(x, cos, sin).sum().backward()
    assert cos.grad is not None
