"""Infilling: the meeting search on hand-made sequences, and tiny models trained here (pure torch, CPU, seconds)
on a fixed program: a MIM model (mim_batch + mim_loss) must meet in the middle and return the exact middle, a FIM
model (apply_fim samples) must write it from PSM and SPM prompts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron_code.config.model import ModelConfig
from megatron_code.data.objectives.fim import FIMConfig, apply_fim
from megatron_code.data.objectives.mim import mim_batch
from megatron_code.data.objectives.rng import sample_rng
from megatron_code.inference.infill import (InfillError, fim_infill, find_meeting, infill, infill_ids, mim_generate,
                                            mim_infill)
from megatron_code.training.losses import causal_lm_loss, mim_loss, split_directions

SPECIALS = ["<|endoftext|>", "<pad>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>", "<l2r>", "<r2l>"]
PREFIX = "def area(w, h):\n    "
MIDDLE = "return w * h + 1"
SUFFIX = "\n\nprint(area(2, 3))\n"
DOC = PREFIX + MIDDLE + SUFFIX


class CharTokenizer:
    """One id per character of DOC (plus the project's special tokens): enough of the Tokenizer interface."""

    def __init__(self, text: str):
        self.special_tokens = {s: i for i, s in enumerate(SPECIALS)}
        self.chars = sorted(set(text))
        self.to_id = {c: len(SPECIALS) + i for i, c in enumerate(self.chars)}
        self.vocab_size = len(SPECIALS) + len(self.chars)
        self.eod, self.pad = 0, 1

    def encode(self, text):
        return [self.to_id[c] for c in text]

    def decode(self, ids):
        return "".join(SPECIALS[i] if i < len(SPECIALS) else self.chars[i - len(SPECIALS)] for i in ids)




def _stream(tok, n_docs: int) -> np.ndarray:
    """DOC EOD DOC EOD ...: packed samples cut anywhere in it, as the trainer's are."""
    return np.asarray((tok.encode(DOC) + [tok.eod]) * n_docs, dtype=np.int64)


def _samples(stream: np.ndarray, rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
    starts = rng.integers(0, len(stream) - length, size=batch)
    return np.stack([stream[s:s + length] for s in starts])


def _train(tok, loss_fn, steps: int, seq: int = 48, seed: int = 0, lr: float = 3e-3,
           position_embedding: str = "rope"):
    from megatron_code.model.gpt import GPT

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the per-test thread fixture; tiny matmuls want 1 thread
    try:
        return _train_loop(GPT, tok, loss_fn, steps, seq, seed, lr, position_embedding)
    finally:
        torch.set_num_threads(threads)


def _train_loop(GPT, tok, loss_fn, steps, seq, seed, lr, position_embedding):
    torch.manual_seed(seed)
    model = GPT(ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=tok.vocab_size,
                            max_position_embeddings=128, vocab_pad_multiple=8,
                            position_embedding=position_embedding))
    model.init_weights(torch.Generator().manual_seed(seed))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    stream = _stream(tok, 12)
    for step in range(steps):
        tokens = _samples(stream, rng, 16, seq + 1)
        loss = loss_fn(model, tokens, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), float(loss.detach())


def _mim_step(tok):
    ids = tok.special_tokens

    def step(model, tokens, _):
        batch = mim_batch(torch.from_numpy(tokens), None, ids["<l2r>"], ids["<r2l>"], tok.pad, tok.eod)
        logits = model(batch["input_ids"], position_ids=batch["position_ids"])
        fwd, bwd = split_directions(logits, batch)
        return mim_loss(fwd, bwd, batch, 0.1, "tv")[0]
    return step


def _fim_step(tok):
    """Half the samples are apply_fim at random cut points; the other half cut at the test's split, laid out from
    the spec (FORMATS.md section 4) written out here, independently of inference/infill.py's prompt builder.
    (A 2-layer toy learns random-cut PSM too slowly for a unit test: it must find where the prefix ended.)"""
    cfg = FIMConfig(rate=1.0, spm_rate=0.5)
    sp = tok.special_tokens
    pre, mid, suf = tok.encode(PREFIX), tok.encode(MIDDLE), tok.encode(SUFFIX)
    psm = [sp["<fim_prefix>"], *pre, sp["<fim_suffix>"], *suf, sp["<fim_middle>"], *mid, tok.eod]
    spm = [sp["<fim_prefix>"], sp["<fim_suffix>"], *suf, sp["<fim_middle>"], *pre, *mid, tok.eod]
    doc = np.asarray(tok.encode(DOC) + [tok.eod] * 4, dtype=np.int64)  # one whole document per sample (+ room)
    fixed = [np.asarray(x + [sp["<fim_pad>"]] * (len(doc) - len(x)), dtype=np.int64) for x in (psm, spm)]

    def step(model, tokens, i):
        out = [apply_fim(doc, sample_rng(0, 0, i * len(tokens) + j), cfg, tok) for j in range(len(tokens) // 2)]
        out += [(x, (x != sp["<fim_pad>"]).astype(np.float32)) for x in fixed] * (len(tokens) // 4)
        x = torch.from_numpy(np.stack([o[0] for o in out]).astype(np.int64))
        mask = torch.from_numpy(np.stack([o[1] for o in out]))
        logits = model(x[:, :-1])
        return causal_lm_loss(logits, x[:, 1:], mask[:, 1:])
    return step


@pytest.fixture(scope="module")
def tok():
    return CharTokenizer(DOC)


@pytest.fixture(scope="module")
def mim_model(tok):
    model, loss = _train(tok, _mim_step(tok), steps=160)
    assert loss < 0.3, f"toy MIM model did not fit its corpus (loss {loss})"
    return model


@pytest.fixture(scope="module")
def fim_model(tok):
    model, loss = _train(tok, _fim_step(tok), steps=300)
    assert loss < 0.5, f"toy FIM model did not fit its corpus (loss {loss})"
    return model


# ---------------------------------------------------------------------------------------------- meeting search
def test_find_meeting_forward_frontier_in_backward_text():
    prefix, suffix = [1, 2], [8, 9]
    fwd, bwd = [3, 4, 5], [7, 6, 5, 4]  # backward wrote 7 6 5 4 (reading order 4 5 6 7)
    left, right = prefix + fwd, bwd[::-1] + suffix
    (join, bj), = find_meeting(left, right, 2, len(prefix), len(suffix), "fwd")
    assert left[:join] + right[bj:] == [1, 2, 3, 4, 5, 6, 7, 8, 9]


def test_find_meeting_backward_frontier_and_short_middles():
    prefix, suffix = [1, 2, 3], [8, 9]
    # the backward side regenerated the end of the prefix: the middle is [5] (written only backward)
    left, right = prefix, [2, 3, 5] + suffix
    (join, bj), = find_meeting(left, right, 2, 3, 2, "bwd")
    assert left[:join] + right[bj:] == [1, 2, 3, 5, 8, 9]
    # the forward side wrote the start of the suffix: empty middle
    left, right = prefix + [8, 9], suffix
    (join, bj), = find_meeting(left, right, 2, 3, 2, "fwd")
    assert left[:join] + right[bj:] == prefix + suffix
    # a match wholly inside the suffix, past the backward text, would drop suffix tokens: rejected
    assert find_meeting([1, 2, 3, 9, 4], [7] + [8, 9, 4, 5], 2, 3, 4, "fwd") == []


# ---------------------------------------------------------------------------------------------- trained toys
def test_mim_infill_meets_and_returns_the_middle(tok, mim_model):
    (res,) = mim_infill(mim_model, tok, [PREFIX], [SUFFIX], n=3, max_new_tokens=24)
    assert res.status == "met", res
    assert res.text == MIDDLE
    # both directions did part of the work and stopped long before writing the middle twice
    assert res.forward and res.backward and res.steps < len(MIDDLE)
    assert res.agreement == 1.0


def test_mim_infill_batched_other_splits_and_budget(tok, mim_model):
    cuts = [(4, 20), (len(PREFIX) + 3, len(PREFIX) + 9), (10, 11)]
    pre = [DOC[:a] for a, _ in cuts]
    suf = [DOC[b:] for _, b in cuts]
    results = mim_infill(mim_model, tok, pre, suf, n=3, max_new_tokens=30, batch_size=2)
    assert [r.text for r in results] == [DOC[a:b] for a, b in cuts]
    assert all(r.status == "met" for r in results)
    # a budget too small to meet: the forward output alone, reported as such
    (short,) = mim_infill(mim_model, tok, [PREFIX], [SUFFIX], n=3, max_new_tokens=2)
    assert short.status == "budget" and short.text == MIDDLE[:2]


def test_mim_left_to_right_generation(tok, mim_model):
    out = mim_generate(mim_model, tok, [PREFIX], max_new_tokens=len(MIDDLE))
    assert out == [MIDDLE]


def test_fim_infill_psm_and_spm(tok, fim_model):
    for mode in ("fim-psm", "fim-spm"):
        (res,) = infill(fim_model, tok, [PREFIX], [SUFFIX], mode, max_new_tokens=30)
        assert res.text == MIDDLE, (mode, res)
        assert res.status in ("eod", "sentinel")
    results = fim_infill(fim_model, tok, [PREFIX, PREFIX], [SUFFIX, SUFFIX], spm=True, max_new_tokens=30,
                         batch_size=2)
    assert [r.text for r in results] == [MIDDLE, MIDDLE] and results[0].status == "eod"
    (short,) = fim_infill(fim_model, tok, [PREFIX], [SUFFIX], max_new_tokens=4)
    assert short.status == "budget" and short.text == MIDDLE[:4]


def test_errors_name_the_fix(tok, mim_model):
    class NoSentinels(CharTokenizer):
        def __init__(self, text):
            super().__init__(text)
            self.special_tokens = {"<|endoftext|>": 0}

    with pytest.raises(InfillError, match="sentinel"):
        mim_infill(mim_model, NoSentinels(DOC), [PREFIX], [SUFFIX])
    with pytest.raises(InfillError, match="mode"):
        infill(mim_model, tok, [PREFIX], [SUFFIX], "fim-xyz")
    with pytest.raises(InfillError, match="n-gram"):
        mim_infill(mim_model, tok, [PREFIX], [SUFFIX], n=0)
    assert infill_ids(tok).l2r == 6
