"""MIM invariants: batch layout and alignment, beta 0 == two separate CEs, agreement 0 for identical
distributions, a position-only fake model, every divergence against its formula, gradients and stop-gradient."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from megatron_code.config.job import JobConfig
from megatron_code.data.objectives import mim_batch, mim_forward_batch
from megatron_code.parallel.pipeline import batch_from_labels, to_pipeline_batch
from megatron_code.training.losses import (DIVERGENCES, LossError, causal_lm_loss, mim_loss, split_directions,
                                           token_divergence)
from megatron_code.training.objective import MIMObjective

L2R, R2L, PAD, EOD, V = 6, 7, 1, 0, 40


def random_tokens(B=3, S=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(8, V, (B, S + 1), generator=g)


def test_layout_worked_example():
    tokens = torch.tensor([[10, 11, 12, 13, 14]])  # S = 4
    b = mim_batch(tokens, None, L2R, R2L, PAD, EOD)
    assert b["input_ids"].tolist() == [[L2R, 10, 11, 12], [R2L, 13, 12, 11]]
    assert b["labels"].tolist() == [[10, 11, 12, 13], [13, 12, 11, 10]]
    assert b["align_index"].tolist() == [3, 2, 1, 0] and b["batch_size"] == 1
    assert b["position_ids"].tolist() == [[0, 1, 2, 3]] * 2
    assert b["loss_mask"].tolist() == [[1.0] * 4] * 2 and b["agree_mask"].tolist() == [[1.0] * 4]


def test_contexts_are_before_and_after_the_same_token():
    tokens = random_tokens()
    B, S = tokens.shape[0], tokens.shape[1] - 1
    b = mim_batch(tokens, None, L2R, R2L, PAD, EOD)
    fwd_in, bwd_in = b["input_ids"][:B], b["input_ids"][B:]
    fwd_lab, bwd_lab = b["labels"][:B], b["labels"][B:]
    assert b["input_ids"].shape == (2 * B, S) and b["labels"].shape == (2 * B, S)
    for i in range(S):
        j = int(b["align_index"][i])
        assert torch.equal(fwd_lab[:, i], tokens[:, i]) and torch.equal(bwd_lab[:, j], tokens[:, i])
        # forward sees <l2r> + t_0..t_{i-1}; backward sees <r2l> + t_{S-1}..t_{i+1}
        assert torch.equal(fwd_in[:, 1:i + 1], tokens[:, :i]) and bool((fwd_in[:, 0] == L2R).all())
        assert torch.equal(bwd_in[:, 1:j + 1], tokens[:, i + 1:S].flip(1)) and bool((bwd_in[:, 0] == R2L).all())
    fb = mim_forward_batch(tokens, None, L2R, PAD)
    assert torch.equal(fb["input_ids"], fwd_in) and torch.equal(fb["labels"], fwd_lab)


def test_masks_follow_token_mask_pad_and_eod():
    tokens = random_tokens(B=2, S=10, seed=1)
    tokens[0, 3] = EOD
    tokens[1, 7:] = PAD  # e.g. FIM padding at the tail
    token_mask = torch.ones_like(tokens, dtype=torch.float32)
    token_mask[0, 5] = 0.0
    b = mim_batch(tokens, token_mask, L2R, R2L, PAD, EOD)
    S = 10
    fwd_mask, bwd_mask = b["loss_mask"][:2], b["loss_mask"][2:]
    expected = token_mask[:, :S] * (tokens[:, :S] != PAD)
    assert torch.equal(fwd_mask, expected) and torch.equal(bwd_mask, expected.flip(1))
    assert torch.equal(b["agree_mask"], expected * (tokens[:, :S] != EOD))
    assert b["agree_mask"][0, 3] == 0 and fwd_mask[0, 3] == 1  # EOD: trained by CE, excluded from agreement


def ce_oracle(logits, labels, mask):
    ce = F.cross_entropy(logits.double().reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
    return (ce * mask.reshape(-1).double()).sum() / mask.sum()


def batch_and_logits(B=2, S=9, seed=0):
    tokens = random_tokens(B, S, seed)
    tokens[0, 4] = EOD
    tokens[1, -3:] = PAD
    b = mim_batch(tokens, None, L2R, R2L, PAD, EOD)
    g = torch.Generator().manual_seed(seed + 100)
    logits = torch.randn(2 * B, S, V, generator=g) * 3
    return b, logits


def test_causal_lm_loss_matches_cross_entropy():
    b, logits = batch_and_logits()
    got = causal_lm_loss(logits, b["labels"], b["loss_mask"])
    assert torch.allclose(got.double(), ce_oracle(logits, b["labels"], b["loss_mask"]), atol=1e-5)
    empty = causal_lm_loss(logits, b["labels"], torch.zeros_like(b["loss_mask"]))
    assert empty.item() == 0.0


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_beta_zero_is_sum_of_two_ces(divergence):
    b, logits = batch_and_logits(seed=2)
    lf, lb = split_directions(logits, b)
    total, parts = mim_loss(lf, lb, b, beta=0.0, divergence=divergence)
    B = b["batch_size"]
    fwd = ce_oracle(lf, b["labels"][:B], b["loss_mask"][:B])
    bwd = ce_oracle(lb, b["labels"][B:], b["loss_mask"][B:])
    assert torch.allclose(total.double(), fwd + bwd, atol=1e-5)
    assert torch.allclose(parts["fwd_ce"].double(), fwd, atol=1e-5)
    assert torch.allclose(parts["bwd_ce"].double(), bwd, atol=1e-5)
    assert parts["agreement"].item() > 0  # still computed for logging
    total2, _ = mim_loss(lf, lb, b, beta=0.5, divergence=divergence)
    assert torch.allclose(total2, total + 0.5 * parts["agreement"], atol=1e-6)


def direct_divergence(p, q, kind):
    """Textbook formulas in float64 on full distributions (B, S, V) -> (B, S)."""
    m = (p + q) / 2
    kl = lambda a, b: (a * (a.log() - b.log())).sum(-1)  # noqa: E731
    return {"tv": 0.5 * (p - q).abs().sum(-1), "l2": ((p - q) ** 2).sum(-1), "kl": kl(p, q), "rkl": kl(q, p),
            "js": 0.5 * kl(p, m) + 0.5 * kl(q, m)}[kind]


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_each_divergence_against_formula(kind):
    b, logits = batch_and_logits(seed=3)
    lf, lb = split_directions(logits, b)
    p = torch.softmax(lf.double(), -1)
    q = torch.softmax(lb.double(), -1)[:, b["align_index"]]
    per_token = token_divergence(torch.log_softmax(lf, -1), torch.log_softmax(lb, -1)[:, b["align_index"]], kind)
    expected = direct_divergence(p, q, kind)
    assert torch.allclose(per_token.double(), expected, atol=1e-5)
    if kind == "tv":
        assert bool(((expected >= 0) & (expected <= 1)).all())
    if kind == "js":
        assert bool((expected <= math.log(2) + 1e-9).all())
    _, parts = mim_loss(lf, lb, b, beta=1.0, divergence=kind)
    m = b["agree_mask"].double()
    assert torch.allclose(parts["agreement"].double(), (expected * m).sum() / m.sum(), atol=1e-5)


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_agreement_zero_for_identical_distributions(kind):
    b, logits = batch_and_logits(seed=4)
    lf, _ = split_directions(logits, b)
    lb = lf.flip(1)  # backward position S-1-i gets exactly the forward distribution of position i
    _, parts = mim_loss(lf, lb, b, beta=1.0, divergence=kind)
    assert abs(parts["agreement"].item()) < 1e-6
    _, unaligned = mim_loss(lf, lf, b, beta=1.0, divergence=kind)  # same logits, positions not matched
    assert unaligned["agreement"].item() > 1e-3


class PositionOnlyModel(torch.nn.Module):
    """Logits depend only on the original position of the token being predicted.

    Sample tokens are ``OFF + k`` for position k, so the model can read positions from its inputs: forward input
    ``OFF + k`` predicts position k+1 (the sentinel predicts 0); backward input ``OFF + k`` predicts k-1 (the
    sentinel predicts S-1). It peaks on the right token so the labels are checked too.
    """

    OFF = 8

    def __init__(self, S, vocab):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        table = torch.randn(S, vocab, generator=g)
        table[torch.arange(S), self.OFF + torch.arange(S)] += 30.0
        self.table = torch.nn.Parameter(table)

    def forward(self, rows):  # (N, S) -> (N, S, V)
        S = rows.shape[1]
        k = rows - self.OFF
        fwd = torch.where(rows == L2R, torch.zeros_like(k), k + 1)
        bwd = torch.where(rows == R2L, torch.full_like(k, S - 1), k - 1)
        target_pos = torch.where((rows[:, :1] == L2R), fwd, bwd)
        return self.table[target_pos]


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_position_alignment_with_position_only_model(kind):
    B, S = 2, 16
    tokens = (PositionOnlyModel.OFF + torch.arange(S + 1)).repeat(B, 1)
    model = PositionOnlyModel(S, PositionOnlyModel.OFF + S + 1)
    b = mim_batch(tokens, None, L2R, R2L, PAD, EOD)
    lf, lb = split_directions(model(b["input_ids"]), b)
    total, parts = mim_loss(lf, lb, b, beta=1.0, divergence=kind)
    assert parts["agreement"].item() < 1e-6
    assert parts["fwd_ce"].item() < 1e-6 and parts["bwd_ce"].item() < 1e-6  # labels are the predicted tokens
    # an off-by-one alignment would be caught
    shifted = dict(b, align_index=b["align_index"].roll(1))
    _, bad = mim_loss(lf, lb, shifted, beta=1.0, divergence=kind)
    assert bad["agreement"].item() > 1e-2
    total.backward()
    assert model.table.grad is not None


def _grads(lf, lb, b, **kw):
    lf = lf.clone().requires_grad_(True)
    lb = lb.clone().requires_grad_(True)
    total, _ = mim_loss(lf, lb, b, **kw)
    total.backward()
    return lf.grad, lb.grad


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_gradients_flow_and_stop_grad_stops_them(kind):
    b, logits = batch_and_logits(seed=5)
    lf, lb = split_directions(logits, b)
    ce_f, ce_b = _grads(lf, lb, b, beta=0.0, divergence=kind)
    full_f, full_b = _grads(lf, lb, b, beta=1.0, divergence=kind)
    assert ce_f.abs().sum() > 0 and ce_b.abs().sum() > 0
    assert not torch.allclose(full_f, ce_f) and not torch.allclose(full_b, ce_b)  # agreement trains both sides
    sf_f, sf_b = _grads(lf, lb, b, beta=1.0, divergence=kind, stop_grad="fwd")
    assert torch.allclose(sf_f, ce_f, atol=1e-7) and torch.allclose(sf_b, full_b, atol=1e-7)
    sb_f, sb_b = _grads(lf, lb, b, beta=1.0, divergence=kind, stop_grad="bwd")
    assert torch.allclose(sb_f, full_f, atol=1e-7) and torch.allclose(sb_b, ce_b, atol=1e-7)


def test_agreement_gradient_matches_finite_differences():
    b, logits = batch_and_logits(B=2, S=5, seed=6)
    lf, lb = split_directions(logits.double(), b)
    for kind in DIVERGENCES:
        def f(x, y, kind=kind):
            return mim_loss(x, y, b, beta=0.7, divergence=kind)[0]
        # double logits stay double inside the loss, so finite differences are accurate
        assert torch.autograd.gradcheck(f, (lf.clone().requires_grad_(True), lb.clone().requires_grad_(True)),
                                        eps=1e-6, atol=1e-4, rtol=1e-3, fast_mode=True)


def test_user_errors():
    b, logits = batch_and_logits()
    lf, lb = split_directions(logits, b)
    with pytest.raises(LossError, match="--mim-divergence"):
        mim_loss(lf, lb, b, beta=1.0, divergence="hellinger")
    with pytest.raises(LossError, match="stop_grad"):
        mim_loss(lf, lb, b, beta=1.0, stop_grad="both")
    with pytest.raises(ValueError, match=r"\(B, S\+1\)"):
        mim_batch(torch.zeros(5, dtype=torch.long), None, L2R, R2L, PAD, EOD)


def test_labels_tuple_round_trip_for_pipeline():
    b, logits = batch_and_logits(seed=7)
    lf, lb = split_directions(logits, b)
    keys = MIMObjective.TRAIN_LABELS
    _, carried = to_pipeline_batch(b, keys)
    assert all(isinstance(t, torch.Tensor) for t in carried)
    again = batch_from_labels(carried, keys)
    assert "batch_size" not in again and torch.equal(again["agree_mask"], b["agree_mask"])
    # the MIM objective recovers B from agree_mask, so its loss on the carried labels is the loss on the batch
    tokenizer = SimpleNamespace(eod=EOD, pad=PAD, special_tokens={"<l2r>": L2R, "<r2l>": R2L})
    objective = MIMObjective(JobConfig(), tokenizer)  # default mim_beta 1.0, divergence tv
    assert torch.equal(objective.loss(logits, again, None, True)[0], mim_loss(lf, lb, b, beta=1.0)[0])
