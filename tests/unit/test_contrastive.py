"""Contrastive search: the batched KV-cache implementation equals the slow no-cache reference token for token,
alpha = 0 is greedy, padded vocab never produced, text form with stop strings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from megatron_code.inference import GenerationError, contrastive_search, contrastive_search_reference, generate_ids
from megatron_code.inference.stopping import truncate_at_stop

from tiny_models import ARCHS, VOCAB, build_model, random_prompts  # noqa: E402,F401



@pytest.mark.parametrize("arch", list(ARCHS))
def test_fast_matches_reference(arch):
    model = build_model(**ARCHS[arch])
    prompts = random_prompts([4, 9, 1])
    fast = contrastive_search(model, prompts, top_k=4, alpha=0.6, max_new_tokens=10)
    ref = [contrastive_search_reference(model, p, top_k=4, alpha=0.6, max_new_tokens=10) for p in prompts]
    assert fast == ref
    assert fast == contrastive_search(model, prompts, top_k=4, alpha=0.6, max_new_tokens=10, batch_size=1)


def test_penalty_changes_the_choice():
    """The degeneration penalty must matter: on a random model greedy repeats itself, contrastive search does not
    follow it everywhere (guards against a penalty that is computed but never applied)."""
    model = build_model()
    prompts = random_prompts([4, 9, 6, 3])
    greedy = generate_ids(model, prompts, max_new_tokens=16)
    cs = contrastive_search(model, prompts, top_k=5, alpha=0.8, max_new_tokens=16)
    assert cs != greedy
    # the chosen tokens repeat less than greedy's
    rep = lambda rows: sum(len(r) - len(set(r)) for r in rows)  # noqa: E731
    assert rep(cs) < rep(greedy)


def test_penalty_uses_max_cosine_over_context():
    """One step by hand: scores from explicit hidden states, no helper of the module under test."""
    model = build_model(**ARCHS["gqa-partial-rope-parallel"])
    prompt = random_prompts([7])[0]
    alpha, k = 0.5, 3
    with torch.no_grad():
        logits, _ = model(torch.tensor([prompt]), return_hidden=True)
        probs = torch.softmax(logits[0, -1, :VOCAB].float(), dim=-1)
        p, cand = probs.topk(k)
        scores = []
        for j in range(k):
            _, h = model(torch.tensor([prompt + [int(cand[j])]]), return_hidden=True)
            cos = F.cosine_similarity(h[0, -1][None], h[0, :-1], dim=-1).max()
            scores.append(float((1 - alpha) * p[j] - alpha * cos))
    expect = int(cand[max(range(k), key=scores.__getitem__)])
    assert contrastive_search(model, [prompt], top_k=k, alpha=alpha, max_new_tokens=1) == [[expect]]


def test_alpha_zero_and_k_one_are_greedy():
    model = build_model(**ARCHS["mqa-learned-untied"])
    prompts = random_prompts([3, 8])
    greedy = generate_ids(model, prompts, max_new_tokens=10)
    assert contrastive_search(model, prompts, top_k=4, alpha=0.0, max_new_tokens=10) == greedy
    assert contrastive_search(model, prompts, top_k=1, alpha=0.7, max_new_tokens=10) == greedy


def test_padded_vocab_never_produced_and_eod_stops():
    model = build_model(**ARCHS["mqa-learned-untied"])
    with torch.no_grad():
        model.lm_head.bias[VOCAB:] = 1e4
    prompts = random_prompts([3, 6])
    out = contrastive_search(model, prompts, top_k=4, alpha=0.6, max_new_tokens=8)
    assert all(0 <= t < VOCAB for row in out for t in row)
    eod = out[1][3]
    cut = contrastive_search(model, prompts, top_k=4, alpha=0.6, max_new_tokens=8, eod_id=eod)
    for f, c in zip(out, cut):
        assert c == (f[:f.index(eod)] if eod in f else f)
    assert cut[1] == contrastive_search_reference(model, prompts[1], top_k=4, alpha=0.6, max_new_tokens=8,
                                                  eod_id=eod)


class _Tok:
    """Minimal tokenizer: id i <-> one character; id 0 is EOD."""

    alphabet = "\0\n abcdefghijklmnopqrstuvwxyz():#=" + "".join(chr(c) for c in range(0x41, 0x41 + 64))
    vocab_size = VOCAB
    eod = 0

    def encode(self, text):
        return [self.alphabet.index(c) for c in text]

    def decode(self, ids):
        return "".join(self.alphabet[i] for i in ids)


def test_text_form_and_stop_strings():
    tok = _Tok()
    model = build_model(seed=4)
    prompts = ["def f(x):\n", "if a"]
    full = contrastive_search(model, tok, prompts, top_k=4, alpha=0.6, max_new_tokens=16)
    assert all(isinstance(t, str) for t in full)
    ids = contrastive_search(model, [tok.encode(p) for p in prompts], top_k=4, alpha=0.6, max_new_tokens=16,
                             eod_id=0)
    assert full == [tok.decode(x) for x in ids]
    longest = max(full, key=len)
    stop = longest[len(longest) // 2:len(longest) // 2 + 2]
    assert len(stop) == 2
    cut = contrastive_search(model, tok, prompts, top_k=4, alpha=0.6, max_new_tokens=16, stop=[stop])
    assert cut == [truncate_at_stop(t, [stop]) for t in full]


def test_bad_settings():
    model = build_model()
    with pytest.raises(GenerationError, match="alpha"):
        contrastive_search(model, [[1]], alpha=1.5)
    with pytest.raises(GenerationError, match="top_k"):
        contrastive_search(model, [[1]], top_k=0)
    with pytest.raises(GenerationError, match="empty"):
        contrastive_search(model, [[]])


# ------------------------------------------------------------------------------------- stochastic contrastive search
@pytest.mark.parametrize("arch", list(ARCHS))
def test_temperature_to_zero_is_the_deterministic_search(arch):
    from megatron_code.inference.contrastive import contrastive_sample

    model = build_model(**ARCHS[arch])
    prompts = random_prompts([4, 9, 1])
    det = contrastive_search(model, prompts, top_k=4, alpha=0.6, max_new_tokens=12)
    for t in (1e-4, 1e-6):
        cold = contrastive_sample(model, prompts, top_k=4, alpha=0.6, max_new_tokens=12, temperature=t,
                                  num_samples=3, seed=5)
        assert all(s == d for samples, d in zip(cold, det) for s in samples)


@pytest.mark.parametrize("arch", list(ARCHS)[:2])
def test_samples_differ_are_reproducible_and_match_the_reference(arch):
    from megatron_code.inference.contrastive import contrastive_sample
    from megatron_code.inference.sampling import row_generator

    model = build_model(**ARCHS[arch])
    prompts = random_prompts([5, 2])
    kw = dict(top_k=4, alpha=0.4, max_new_tokens=10, temperature=0.8, num_samples=6, seed=11)
    hot = contrastive_sample(model, prompts, **kw)
    assert all(len({tuple(s) for s in samples}) > 1 for samples in hot)  # n samples of a prompt differ
    assert hot == contrastive_sample(model, prompts, batch_size=1, **kw)  # batch-independent and reproducible
    assert hot != contrastive_sample(model, prompts, **{**kw, "seed": 12})
    for i, p in enumerate(prompts):
        for s in range(2):
            ref = contrastive_search_reference(model, p, top_k=4, alpha=0.4, max_new_tokens=10, temperature=0.8,
                                               generator=row_generator(11, i, s))
            assert hot[i][s] == ref


def test_stochastic_text_form_and_bad_temperature():
    from megatron_code.inference.contrastive import contrastive_sample

    model = build_model()

    class Tok:
        eod = 0
        special_tokens = {}
        vocab_size = VOCAB

        def encode(self, text):
            return [ord(c) % VOCAB for c in text]

        def decode(self, ids):
            return "".join(chr(65 + i % 26) for i in ids)

    out = contrastive_sample(model, Tok(), ["abc", "de"], top_k=3, alpha=0.5, temperature=1.0, num_samples=2,
                             max_new_tokens=5)
    assert len(out) == 2 and all(len(x) == 2 and all(isinstance(s, str) for s in x) for x in out)
    with pytest.raises(GenerationError, match="temperature"):
        contrastive_sample(model, Tok(), ["a"], temperature=-1.0)
