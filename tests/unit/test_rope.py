"""Rotary embeddings: partial rotation leaves pass-through dims alone, rotation preserves norms, scores depend only
on relative position, and the half-split convention equals an independent per-pair implementation."""

import math

import pytest
import torch

from megatron_code.model.rope import apply_rotary, rotary_cos_sin, rotary_inv_freq


def rotate(x, positions, r, base=10000.0):
    """x (B, T, H, D), positions (B, T) -> rotated with the first r dims of each head."""
    cos, sin = rotary_cos_sin(positions, r, base, x.dtype)
    return apply_rotary(x, cos, sin)


def independent_rope(x, positions, r, base):
    """Half-split RoPE written pair by pair: dims (i, i + r/2) rotate by angle pos * base^(-2i/r)."""
    out = x.clone().double()
    b, t, h, d = x.shape
    half = r // 2
    for bi in range(b):
        for ti in range(t):
            pos = float(positions[bi, ti])
            for i in range(half):
                theta = pos * base ** (-2.0 * i / r)
                c, s = math.cos(theta), math.sin(theta)
                x1 = x[bi, ti, :, i].double()
                x2 = x[bi, ti, :, i + half].double()
                out[bi, ti, :, i] = x1 * c - x2 * s
                out[bi, ti, :, i + half] = x2 * c + x1 * s
    return out


def test_shapes_and_frequencies():
    pos = torch.arange(5)[None].expand(2, 5)
    cos, sin = rotary_cos_sin(pos, 8, 10000.0, torch.float32)
    assert cos.shape == sin.shape == (2, 5, 1, 8)
    torch.testing.assert_close(rotary_inv_freq(8, 10000.0), torch.tensor([10000.0 ** (-i / 8) for i in (0, 2, 4, 6)]))
    torch.testing.assert_close(cos[:, 0], torch.ones(2, 1, 8))  # position 0 is the identity


@pytest.mark.parametrize("r, base", [(16, 10000.0), (8, 10000.0), (4, 500.0)])
def test_half_split_equals_independent_implementation(r, base):
    x = torch.randn(2, 6, 3, 16)
    pos = torch.tensor([[0, 1, 2, 3, 17, 100], [5, 4, 3, 2, 1, 0]])
    got = rotate(x, pos, r, base)
    torch.testing.assert_close(got.double(), independent_rope(x, pos, r, base), rtol=1e-5, atol=1e-5)


def test_interleaved_convention_is_not_what_we_use():
    # GPT-J style pairs (2i, 2i+1) give a different result: converters rely on the half-split order.
    x = torch.randn(1, 3, 1, 8)
    pos = torch.arange(3)[None] + 1
    perm = torch.tensor([0, 2, 4, 6, 1, 3, 5, 7])  # interleaved -> half-split layout
    interleaved_via_half = rotate(x[..., perm], pos, 8)[..., torch.argsort(perm)]
    assert (interleaved_via_half - rotate(x, pos, 8)).abs().max() > 1e-3


@pytest.mark.parametrize("r", [4, 8, 12])
def test_partial_rotary_leaves_pass_through_dims(r):
    x = torch.randn(2, 7, 4, 16)
    pos = torch.arange(7)[None].expand(2, 7) * 3
    out = rotate(x, pos, r)
    assert out.shape == x.shape
    assert torch.equal(out[..., r:], x[..., r:])
    assert (out[..., :r] - x[..., :r]).abs().max() > 1e-3


def test_rotation_preserves_norms_per_pair():
    x = torch.randn(2, 9, 3, 32)
    pos = torch.randint(0, 4096, (2, 9))
    out = rotate(x, pos, 24)
    half = 12
    pair = lambda t: t[..., :half] ** 2 + t[..., half:24] ** 2  # noqa: E731
    torch.testing.assert_close(pair(out), pair(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1), rtol=1e-5, atol=1e-5)


def test_scores_depend_only_on_relative_position():
    q = torch.randn(1, 1, 2, 16)
    k = torch.randn(1, 1, 2, 16)

    def score(m, n):
        qm = rotate(q, torch.tensor([[m]]), 16)
        kn = rotate(k, torch.tensor([[n]]), 16)
        return (qm * kn).sum(-1)  # (1, 1, H)

    for m, n in ((3, 1), (10, 2), (0, 7)):
        for shift in (1, 50, 1000):
            torch.testing.assert_close(score(m + shift, n + shift), score(m, n), rtol=1e-4, atol=1e-4)
    assert (score(5, 1) - score(5, 2)).abs().max() > 1e-3


def test_low_precision_angles_computed_in_fp32():
    pos = torch.tensor([[4000]])
    cos16, sin16 = rotary_cos_sin(pos, 8, 10000.0, torch.bfloat16)
    cos32, sin32 = rotary_cos_sin(pos, 8, 10000.0, torch.float32)
    assert cos16.dtype == torch.bfloat16
    # bf16 positions would round 4000 -> 4000 +- 16; the angles must come from exact fp32 positions.
    torch.testing.assert_close(cos16.float(), cos32, rtol=0, atol=1e-2)
    torch.testing.assert_close(sin16.float(), sin32, rtol=0, atol=1e-2)
