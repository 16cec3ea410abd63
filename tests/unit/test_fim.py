"""FIM invariants (FORMATS.md section 4): identity at rate 0, exact PSM/SPM layouts, text preserved, determinism
per (seed, epoch, index) in any order or worker, EOD boundaries respected, <fim_pad> padding carries no loss."""

import multiprocessing

import numpy as np
import pytest

from megatron_code.data.objectives import (FIMConfig, FIMError, apply_fim, apply_fim_to_document, fim_ids,
                                           sample_rng)

SPECIALS = ["<|endoftext|>", "<pad>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>", "<l2r>", "<r2l>",
            "<file_sep>"]
# Multi-character pieces make tokenization context dependent, so a character-level cut really re-tokenizes.
PIECES = ["def ", "return", "    ", "self", "()", "):", "\n\n"] + [chr(c) for c in range(32, 127)] + ["\n", "\t"]


class FakeTokenizer:
    """Test-only tokenizer with the project's interface: greedy longest-match over PIECES, specials first."""

    def __init__(self, specials=SPECIALS):
        self.special_tokens = {name: i for i, name in enumerate(specials)}
        self._pieces = list(self.special_tokens) + PIECES
        self._piece_id = {p: i for i, p in enumerate(self._pieces) if i >= len(specials)}
        self._max = max(len(p) for p in PIECES)
        self.vocab_size = len(self._pieces)
        self.eod = self.special_tokens["<|endoftext|>"]
        self.pad = self.special_tokens.get("<pad>", self.eod)

    def encode(self, text):
        ids, i = [], 0
        while i < len(text):
            for n in range(min(self._max, len(text) - i), 0, -1):
                tid = self._piece_id.get(text[i:i + n])
                if tid is not None:
                    ids.append(tid)
                    i += n
                    break
            else:
                raise ValueError(f"fake tokenizer cannot encode {text[i]!r}")
        return ids

    def decode(self, ids):
        return "".join(self._pieces[int(i)] for i in ids)


TOK = FakeTokenizer()
IDS = fim_ids(TOK)
SENTINELS = {IDS.prefix, IDS.middle, IDS.suffix, IDS.pad}
DOCS = [
    "def add(a, b):\n    return a + b\n",
    "class A:\n    def f(self):\n        return self.x\n\n\nprint(A().f())\n",
    "x = [i * i for i in range(10)]  # squares\n",
    "def g():\n\tpass\n",
]


def enc(text):
    return np.asarray(TOK.encode(text), dtype=np.int64)


def packed(docs, extra=0):
    """Documents joined with EOD after each one, as the packer concatenates them."""
    out = []
    for d in docs:
        out += TOK.encode(d) + [TOK.eod]
    return np.asarray(out[:len(out) - extra] if extra else out, dtype=np.int64)


def reassemble(segment):
    """Original text of one (FIM'ed or plain) EOD-free segment, from its PSM or SPM layout."""
    seg = list(segment)
    if IDS.prefix not in seg:
        assert not SENTINELS & set(seg)
        return TOK.decode(seg)
    assert seg.count(IDS.prefix) == seg.count(IDS.suffix) == seg.count(IDS.middle) == 1 and seg[0] == IDS.prefix
    s, m = seg.index(IDS.suffix), seg.index(IDS.middle)
    if s == 1:  # SPM: <P> <S> suffix <M> prefix middle (prefix/middle boundary is invisible; only their text)
        assert s < m
        return TOK.decode(seg[m + 1:]) + TOK.decode(seg[2:m])
    assert 1 < s < m  # PSM: <P> prefix <S> suffix <M> middle
    return TOK.decode(seg[1:s]) + TOK.decode(seg[m + 1:]) + TOK.decode(seg[s + 1:m])


def split_eod(tokens):
    out, cur = [], []
    for t in tokens:
        if t == TOK.eod:
            out.append(cur)
            cur = []
        else:
            cur.append(int(t))
    return out, cur


def test_rate_zero_is_identity():
    rng = np.random.default_rng(0)
    sample = rng.integers(9, TOK.vocab_size, size=65).astype(np.int64)
    sample[[10, 30, 31]] = TOK.eod
    out, mask = apply_fim(sample, sample_rng(1, 0, 5), FIMConfig(rate=0.0), TOK)
    np.testing.assert_array_equal(out, sample)
    assert out.dtype == sample.dtype and mask.dtype == np.float32 and mask.shape == sample.shape
    assert np.all(mask == 1.0)
    doc = packed(DOCS[:2])
    np.testing.assert_array_equal(apply_fim_to_document(doc, sample_rng(1, 0, 5), FIMConfig(rate=0.0), TOK), doc)
    # with a split token, the per-file rate governs: fragment_rate 0 means no FIM even at rate 1
    cfg = FIMConfig(rate=1.0, fragment_rate=0.0, split_token="<file_sep>")
    np.testing.assert_array_equal(apply_fim(sample, sample_rng(1, 0, 5), cfg, TOK)[0], sample)


def _expected_layout(text, rng, spm):
    """The documented draw order: FIM decision, two cut points, SPM decision."""
    assert rng.random() < 1.0
    lo, hi = sorted(rng.integers(0, len(text) + 1, size=2))
    rng.random()  # SPM decision: spm_rate is 0 or 1 in this test, so the draw itself does not matter
    p, m, s = enc(text[:lo]), enc(text[lo:hi]), enc(text[hi:])
    if spm:
        return np.concatenate([[IDS.prefix, IDS.suffix], s, [IDS.middle], p, m]), (lo, hi)
    return np.concatenate([[IDS.prefix], p, [IDS.suffix], s, [IDS.middle], m]), (lo, hi)


@pytest.mark.parametrize("spm", [False, True], ids=["PSM", "SPM"])
def test_layout_exact(spm):
    text = DOCS[1]
    cfg = FIMConfig(rate=1.0, spm_rate=1.0 if spm else 0.0)
    cuts = set()
    for index in range(20):
        out = apply_fim_to_document(enc(text), sample_rng(3, 0, index), cfg, TOK)
        expected, cut = _expected_layout(text, sample_rng(3, 0, index), spm)
        np.testing.assert_array_equal(out, expected)
        cuts.add(cut)
        assert reassemble(out) == text
        # the same layout inside a packed sample (document + EOD), cut back to the sample length
        sample = np.concatenate([enc(text), [TOK.eod]])
        got, mask = apply_fim(sample, sample_rng(3, 0, index), cfg, TOK)
        np.testing.assert_array_equal(got, np.concatenate([expected, [TOK.eod]])[:len(sample)])
    assert len(cuts) > 10  # cut points really are random


def test_text_preserved_per_document_and_eod_kept():
    doc = packed(DOCS)
    cfg = FIMConfig(rate=0.6, spm_rate=0.5)
    kinds = set()
    for index in range(60):
        out = apply_fim_to_document(doc, sample_rng(7, 2, index), cfg, TOK)
        segments, tail = split_eod(out)
        assert tail == [] and len(segments) == len(DOCS)  # EODs kept, one per document, none created
        assert [reassemble(s) for s in segments] == DOCS
        kinds |= {"fim" if IDS.prefix in s else "plain" for s in segments}
        kinds |= {"spm" for s in segments if len(s) > 1 and s[1] == IDS.suffix}
    assert kinds == {"fim", "plain", "spm"}


def test_packed_sample_is_document_transform_truncated():
    """Inside a packed sample each EOD-delimited segment (including a partial first/last one) is FIM'ed alone,
    and the result is cut back to the sample length."""
    sample = packed(DOCS + DOCS)[7:7 + 81]  # starts and ends mid-document, like a real packed sample
    cfg = FIMConfig(rate=1.0)
    for index in range(20):
        out, mask = apply_fim(sample, sample_rng(0, 0, index), cfg, TOK)
        full = apply_fim_to_document(sample, sample_rng(0, 0, index), cfg, TOK)
        assert len(full) > len(sample)
        np.testing.assert_array_equal(out, full[:len(sample)])
        assert np.all(mask == 1.0)
        orig_segments, orig_tail = split_eod(sample)
        segments, tail = split_eod(full)
        assert [reassemble(s) for s in segments] == [TOK.decode(s) for s in orig_segments]
        assert reassemble(tail) == TOK.decode(orig_tail)
        # the EODs of the output sit exactly between the transformed segments: none moved inside a segment
        assert int(np.sum(out == TOK.eod)) <= int(np.sum(sample == TOK.eod))


def test_padding_masks_pad_targets():
    # A non-canonical tokenization (one id per character) re-tokenizes shorter, so the sample must be padded.
    text = "def f(self):\n    return self\n" * 2
    chars = np.asarray([TOK._piece_id[c] for c in text] + [TOK.eod], dtype=np.int64)
    out, mask = apply_fim(chars, sample_rng(0, 0, 1), FIMConfig(rate=1.0), TOK)
    assert len(out) == len(chars)
    pads = np.flatnonzero(out == IDS.pad)
    assert len(pads) > 0 and pads[0] + len(pads) == len(out)  # padding is one run at the tail
    np.testing.assert_array_equal(mask, (out != IDS.pad).astype(np.float32))
    # trainer convention: labels = tokens[1:], loss_mask = mask[1:] -> no loss where the target is <fim_pad>
    labels, lmask = out[1:], mask[1:]
    assert np.all(lmask[labels == IDS.pad] == 0) and np.all(lmask[labels != IDS.pad] == 1)
    segments, _ = split_eod(out)
    assert reassemble(segments[0]) == text


def _transform_index(index, seed=11):
    sample = packed(DOCS + DOCS)[index % 13: index % 13 + 70]
    return apply_fim(sample, sample_rng(seed, 1, index), FIMConfig(rate=0.5, spm_rate=0.5), TOK)[0].tolist()


def test_deterministic_in_any_order_and_worker():
    indices = list(range(24))
    in_order = [_transform_index(i) for i in indices]
    shuffled = np.random.default_rng(5).permutation(indices)
    by_shuffle = {int(i): _transform_index(int(i)) for i in shuffled}
    assert [by_shuffle[i] for i in indices] == in_order
    with multiprocessing.get_context("fork").Pool(2) as pool:
        assert pool.map(_transform_index, indices[::-1], chunksize=3) == in_order[::-1]
    # and the transform really depends on the index / seed
    assert len({tuple(x) for x in in_order}) > 12
    assert [_transform_index(i, seed=12) for i in indices] != in_order


def test_fragments_split_on_file_separator():
    sep = TOK.special_tokens["<file_sep>"]
    files = DOCS[:3]
    doc = []
    for f in files:
        doc += TOK.encode(f) + [sep]
    doc = np.asarray(doc[:-1] + [TOK.eod], dtype=np.int64)
    cfg = FIMConfig(rate=0.0, fragment_rate=1.0, split_token="<file_sep>")
    for index in range(10):
        out = apply_fim_to_document(doc, sample_rng(0, 0, index), cfg, TOK)
        segments, tail = split_eod(out)
        assert tail == [] and len(segments) == 1
        parts = np.split(np.asarray(segments[0]), np.flatnonzero(np.asarray(segments[0]) == sep))
        parts = [p[1:] if i else p for i, p in enumerate(parts)]  # drop the separator that starts each split
        assert len(parts) == len(files)
        assert all(p[0] == IDS.prefix for p in parts)  # every file got its own FIM
        assert [reassemble(p) for p in parts] == files


def test_user_errors_are_clear():
    with pytest.raises(FIMError, match="fim-rate"):
        FIMConfig(rate=1.5)
    with pytest.raises(FIMError, match="--fim-mode"):
        FIMConfig(mode="batch")
    with pytest.raises(FIMError, match="FIM sentinels"):
        apply_fim(np.zeros(5, dtype=np.int64), sample_rng(0, 0, 0), FIMConfig(),
                  FakeTokenizer(["<|endoftext|>", "<pad>"]))
    with pytest.raises(FIMError, match="single token"):
        fim_ids(TOK, split_token="def f")
    with pytest.raises(ValueError, match="non-negative"):
        sample_rng(-1, 0, 0)


def test_sample_rng_depends_on_every_field():
    draw = lambda *key: sample_rng(*key).integers(0, 2**62, size=4).tolist()  # noqa: E731
    base = draw(1, 2, 3)
    assert draw(1, 2, 3) == base
    assert len({tuple(draw(*k)) for k in [(1, 2, 3), (2, 2, 3), (1, 3, 3), (1, 2, 4), (1, 2, 3, 1)]}) == 5


def test_real_bpe_tokenizer_round_trip(tmp_path):
    tokenizer = pytest.importorskip("megatron_code.data.tokenizer")
    tok = tokenizer.train_code_tokenizer(DOCS * 20, vocab_size=320, output_dir=str(tmp_path))
    ids = fim_ids(tok)
    doc = np.asarray(sum((tok.encode(d) + [tok.eod] for d in DOCS), []), dtype=np.int64)
    for index in range(30):
        out = apply_fim_to_document(doc, sample_rng(0, 0, index), FIMConfig(rate=1.0), tok)
        assert int(np.sum(out == tok.eod)) == len(DOCS)
        assert int(np.sum(out == ids.prefix)) == len(DOCS)
        # strip sentinels and undo the PSM/SPM order per document -> the original text
        texts = []
        for seg in np.split(out, np.flatnonzero(out == tok.eod) + 1)[:-1]:
            seg = seg[:-1].tolist()
            s, m = seg.index(ids.suffix), seg.index(ids.middle)
            if s == 1:
                texts.append(tok.decode(seg[m + 1:]) + tok.decode(seg[2:m]))
            else:
                texts.append(tok.decode(seg[1:s]) + tok.decode(seg[m + 1:]) + tok.decode(seg[s + 1:m]))
        assert texts == DOCS


def test_pieces_with_other_special_tokens_are_left_alone():
    l2r = TOK.special_tokens["<l2r>"]
    with_special = np.concatenate([enc(DOCS[0])[:5], [l2r], enc(DOCS[0])[5:]])
    doc = np.concatenate([with_special, [TOK.eod], enc(DOCS[2]), [TOK.eod]])
    for index in range(5):
        out = apply_fim_to_document(doc, sample_rng(0, 0, index), FIMConfig(rate=1.0), TOK)
        segments, _ = split_eod(out)
        assert segments[0] == with_special.tolist()  # decode/encode would have turned <l2r> into text
        assert segments[1][0] == IDS.prefix and reassemble(segments[1]) == DOCS[2]
