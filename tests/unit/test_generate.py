"""Generation: cached == uncached, batched == one by one, padded vocab never produced, reproducible per-row
sampling, top-k / top-p filters, EOD and stop strings, n samples per prompt."""

from __future__ import annotations

import pytest
import torch

from megatron_code.inference import GenerationError, generate, generate_ids
from megatron_code.inference.generate import attention_mask, left_pad
from megatron_code.inference.sampling import SamplingParams, choose_next, filter_logits, row_generator
from megatron_code.inference.stopping import CompletionTracker, truncate_at_stop

from tiny_models import ARCHS, VOCAB, build_model, random_prompts  # noqa: E402,F401



class CharTokenizer:
    """Test tokenizer: id 0 is EOD, other ids are 1-3 character strings, some spanning a newline, so stop strings
    fall across token boundaries."""

    pieces = ["<|endoftext|>", "\n", " ", "\nd", "ef", "de", "f", "#", "\n#", "i", "if", "\ni", "p", "print", "(",
              ")", ":", "  ", "    "] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + \
        [chr(c) for c in range(ord("A"), ord("Z") + 1)] + [str(d) for d in range(10)] + \
        ["=", "+", "-", "*", "/", ",", ".", "[", "]", "_", "'", "return", "class"]

    def __init__(self):
        assert len(self.pieces) <= VOCAB, len(self.pieces)
        self.vocab_size = VOCAB
        self.eod = 0
        self._ids = {p: i for i, p in enumerate(self.pieces)}

    def encode(self, text):
        return [self._ids[c] for c in text]

    def decode(self, ids):
        return "".join(self.pieces[i] if i < len(self.pieces) else "?" for i in ids)


# -------------------------------------------------------------------------------- cache and batching exactness
@pytest.mark.parametrize("arch", list(ARCHS))
def test_cached_equals_uncached_and_batched_equals_single(arch):
    model = build_model(**ARCHS[arch])
    prompts = random_prompts([5, 11, 1, 8])
    cached = generate_ids(model, prompts, max_new_tokens=12)
    uncached = generate_ids(model, prompts, max_new_tokens=12, use_cache=False)
    single = [generate_ids(model, [p], max_new_tokens=12, use_cache=False)[0] for p in prompts]
    assert cached == uncached
    assert cached == single
    assert all(len(x) == 12 for x in cached)


def test_greedy_matches_manual_argmax_loop():
    """Independent oracle: argmax of the full forward, written out by hand without any of our helpers."""
    model = build_model(**ARCHS["gqa-partial-rope-parallel"])
    prompt = random_prompts([6])[0]
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(10):
            logits = model(torch.tensor([seq]))[0, -1, :VOCAB]
            seq.append(int(logits.argmax()))
    assert generate_ids(model, [prompt], max_new_tokens=10) == [seq[len(prompt):]]


@pytest.mark.parametrize("arch", ["mha-rope-seq", "mqa-learned-untied"])
def test_sampling_is_batch_invariant_and_cache_invariant(arch):
    model = build_model(**ARCHS[arch])
    prompts = random_prompts([3, 9, 6])
    kw = dict(max_new_tokens=10, temperature=1.3, top_k=20, top_p=0.9, seed=7, num_samples=3)
    a = generate_ids(model, prompts, batch_size=16, **kw)
    b = generate_ids(model, prompts, batch_size=1, **kw)
    c = generate_ids(model, prompts, batch_size=4, use_cache=False, **kw)
    d = [generate_ids(model, [p], **kw) for p in prompts]
    assert a == b == c
    # prompt i alone draws from different row streams (its index is 0), so only the first prompt matches
    assert d[0] == a[:3]
    assert len(a) == 9 and len({tuple(x) for x in a[:3]}) > 1  # samples of one prompt differ


def test_seed_reproducible_and_changes_output():
    model = build_model()
    prompts = random_prompts([4, 7])
    kw = dict(max_new_tokens=12, temperature=1.5, num_samples=2)
    assert generate_ids(model, prompts, seed=3, **kw) == generate_ids(model, prompts, seed=3, **kw)
    assert generate_ids(model, prompts, seed=3, **kw) != generate_ids(model, prompts, seed=4, **kw)


def test_greedy_samples_are_identical_and_prompt_major():
    model = build_model()
    prompts = random_prompts([4, 7])
    out = generate_ids(model, prompts, max_new_tokens=6, num_samples=3)
    single = generate_ids(model, prompts, max_new_tokens=6)
    assert out == [single[0]] * 3 + [single[1]] * 3


def test_padded_vocab_rows_never_produced():
    model = build_model(**ARCHS["mqa-learned-untied"])
    with torch.no_grad():
        model.lm_head.bias[VOCAB:] = 1e4  # the padded rows would win every argmax and every draw
    prompts = random_prompts([3, 5])
    greedy = generate_ids(model, prompts, max_new_tokens=8)
    sampled = generate_ids(model, prompts, max_new_tokens=8, temperature=1.0, seed=0, num_samples=4)
    assert all(0 <= t < VOCAB for row in greedy + sampled for t in row)
    with pytest.raises(AssertionError):  # the test can fail: without the mask padded ids are produced
        assert all(t < VOCAB for t in generate_ids(model, prompts, max_new_tokens=3, vocab_size=128)[0])


def test_top_k_one_equals_greedy():
    model = build_model()
    prompts = random_prompts([4, 9])
    assert generate_ids(model, prompts, max_new_tokens=8, temperature=0.7, top_k=1, seed=5) == \
        generate_ids(model, prompts, max_new_tokens=8)


# -------------------------------------------------------------------------------- filters and sampler
def test_top_k_and_top_p_filters():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    kept = lambda **kw: torch.isfinite(filter_logits(logits, SamplingParams(1.0, **kw)))[0].tolist()  # noqa: E731
    assert kept(top_k=2) == [True, True, False, False]
    assert kept(top_p=0.8) == [True, True, False, False]  # 0.5 + 0.3 reaches 0.8
    assert kept(top_p=0.81) == [True, True, True, False]
    assert kept(top_p=0.1) == [True, False, False, False]  # the best token always survives
    assert kept(top_k=3, top_p=0.6) == [True, True, False, False]
    shuffled = logits[:, [2, 0, 3, 1]]
    assert torch.isfinite(filter_logits(shuffled, SamplingParams(1.0, top_p=0.8)))[0].tolist() == \
        [False, True, False, True]


def test_sampler_frequencies_follow_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 50.0]])  # last id is "padding" (vocab_size=4)
    gen = row_generator(0, 0, 0)
    draws = torch.stack([choose_next(logits, SamplingParams(1.0), 4, [gen]) for _ in range(4000)]).flatten()
    freq = torch.bincount(draws, minlength=5).float() / len(draws)
    expect = torch.softmax(logits[0, :4], dim=0)
    assert freq[4] == 0
    assert torch.allclose(freq[:4], expect, atol=0.03)


def test_invalid_settings_raise_clear_errors():
    model = build_model(position_embedding="learned", max_position_embeddings=16)
    with pytest.raises(GenerationError, match="temperature"):
        generate_ids(model, [[1]], temperature=-1)
    with pytest.raises(GenerationError, match="top_p"):
        generate_ids(model, [[1]], temperature=1, top_p=0)
    with pytest.raises(GenerationError, match="empty"):
        generate_ids(model, [[]])
    with pytest.raises(GenerationError, match="embedding rows"):
        generate_ids(model, [[1, 128]])
    with pytest.raises(GenerationError, match="learned positions"):
        generate_ids(model, [[1] * 10], max_new_tokens=7)
    with pytest.raises(GenerationError, match="tokenizer"):
        generate_ids(model, [[1]], stop=["x"])


def test_training_flag_restored():
    model = build_model(hidden_dropout=0.5)
    model.train()
    a = generate_ids(model, random_prompts([4]), max_new_tokens=6)
    assert model.training
    model.eval()
    assert a == generate_ids(model, random_prompts([4]), max_new_tokens=6)  # dropout was off while generating


def test_left_pad_and_mask():
    batch = left_pad([[7, 8, 9], [5]], 2, "cpu", pad_id=0)
    assert batch.tokens.tolist() == [[7, 8, 9, 0, 0], [0, 0, 5, 0, 0]]
    assert batch.positions.tolist() == [[0, 1, 2, 3, 4], [0, 0, 0, 1, 2]]
    mask = attention_mask(batch.valid[:, :3], 3)  # prefill
    assert mask[1, 0].tolist() == [[True, False, True], [False, True, True], [False, False, True]]
    assert attention_mask(batch.valid[:, :4], 1)[1, 0].tolist() == [[False, False, True, True]]


# -------------------------------------------------------------------------------- EOD and stop strings
def test_eod_ends_a_row_and_is_not_returned():
    model = build_model()
    prompts = random_prompts([4, 8, 2])
    full = generate_ids(model, prompts, max_new_tokens=12)
    eod = full[0][5]
    cut = generate_ids(model, prompts, max_new_tokens=12, eod_id=eod)
    for f, c in zip(full, cut):
        expect = f[:f.index(eod)] if eod in f else f
        assert c == expect


def test_stop_strings_truncate_like_post_hoc_cut():
    tok = CharTokenizer()
    model = build_model(seed=3)
    prompts = ["def f(x):\n", "if a", "print(1)\n#"]
    full = generate(model, tok, prompts, max_new_tokens=24, temperature=1.0, seed=2, num_samples=2)
    # stops taken from the middle of what the model actually wrote, so they certainly occur
    texts = sorted((t for row in full for t in row), key=len)
    a, b = texts[-1], texts[-2]
    assert len(b) >= 8
    stops = [a[len(a) // 2:len(a) // 2 + 2], b[len(b) // 2:len(b) // 2 + 3]]
    cut = generate(model, tok, prompts, max_new_tokens=24, temperature=1.0, seed=2, num_samples=2, stop=stops)
    for f_row, c_row in zip(full, cut):
        for f, c in zip(f_row, c_row):
            assert c == truncate_at_stop(f, stops)
    assert sum(len(t) for row in cut for t in row) < sum(len(t) for row in full for t in row)
    kw = dict(max_new_tokens=24, temperature=1.0, seed=2, num_samples=2, eod_id=0)
    ids_full = generate_ids(model, [tok.encode(p) for p in prompts], **kw)
    ids_cut = generate_ids(model, [tok.encode(p) for p in prompts], stop=stops, tokenizer=tok, **kw)
    for f, c in zip(ids_full, ids_cut):
        assert f[:len(c)] == c  # same tokens up to the stop, then nothing more
    assert sum(map(len, ids_cut)) < sum(map(len, ids_full))


def test_completion_tracker_stop_across_tokens():
    tok = CharTokenizer()
    ids = [tok._ids[p] for p in ["    ", "return", " ", "x", "\nd", "ef", " ", "g"]]
    tr = CompletionTracker([tok.encode("def f(x):\n")], max_new_tokens=50, stop=["\ndef", "\nclass"],
                           decode=tok.decode)
    finished_at = next(i for i, t in enumerate(ids) if tr.add(0, t))
    assert finished_at == 5  # "ef" completes "\ndef"
    assert tr.text(0) == "    return x" and tr.stopped_by[0] == "stop"


def test_completion_tracker_finishes_at_first_stop_on_long_sequences():
    """Oracle: the row finishes at the first k where the decoded completion ids[:k] contains a stop. Long random
    sequences exercise the decoding window (only the newest tokens are decoded each step)."""
    tok = CharTokenizer()
    stops = ["\ndef", "\n#", "print"]
    g = torch.Generator().manual_seed(0)
    # mostly letters, rarely a newline piece, so stops appear late (after the window)
    letters = [tok._ids[c] for c in "abcxyz ()"]
    rare = [tok._ids[p] for p in ["\n", "\nd", "ef", "#", "\n#", "print", "p", "r", "i", "n", "t", "de", "f"]]
    late = 0
    for trial in range(30):
        ids = [letters[int(i) % len(letters)] if torch.rand(1, generator=g) < 0.93 else rare[int(i) % len(rare)]
               for i in torch.randint(0, 1000, (300,), generator=g)]
        prefix = tok.encode("x = 1\n")
        first = next((k for k in range(1, len(ids) + 1)
                      if truncate_at_stop(tok.decode(ids[:k]), stops) != tok.decode(ids[:k])), None)
        tr = CompletionTracker([prefix], max_new_tokens=1000, stop=stops, decode=tok.decode)
        finished = next((k + 1 for k, t in enumerate(ids) if tr.add(0, t)), None)
        assert finished == first
        if first is not None:
            assert tr.text(0) == truncate_at_stop(tok.decode(ids), stops)
            late += first > 40
    assert late >= 5  # the window path was exercised


def test_generate_returns_per_prompt_lists_of_strings():
    tok = CharTokenizer()
    model = build_model()
    out = generate(model, tok, ["ab", "", "class A:\n"], max_new_tokens=5, temperature=0.8, num_samples=2)
    assert len(out) == 3 and all(len(x) == 2 and all(isinstance(s, str) for s in x) for x in out)
    greedy = generate(model, tok, ["ab"], max_new_tokens=5)[0][0]
    ids = generate_ids(model, [tok.encode("ab")], max_new_tokens=5, eod_id=0)[0]
    assert greedy == tok.decode(ids)
