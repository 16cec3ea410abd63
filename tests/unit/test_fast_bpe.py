"""The C++ code-BPE encoder (csrc/bpe.cpp via megatron_code.data.fast_bpe) gives exactly the ids of the
`tokenizers` encoder: fuzzed ASCII and non-ASCII text, both merge algorithms, the wrapper seam, real sources."""

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_code.data import fast_bpe
from megatron_code.data.tokenizer import SPECIAL_TOKENS, HFTokenizer, build_tokenizer, train_code_tokenizer

ext = fast_bpe.load_extension()
pytestmark = pytest.mark.skipif(ext is None, reason="megatron_code.data._bpe_cpp not built (or disabled)")

CODE = [
    "def add(a, b):\n    return a + b\n\n\nclass Foo(object):\n    x = 1\n",
    "if __name__ == '__main__':\n\tprint(\"hello world\")  # comment\r\n\r\n",
    "for i in range(10):\n        total += i ** 2\n    else:\n        pass\n",
    "x = {'a': [1, 2, 3], \"b\": (4.5, 6e7)}\n",
    "    \t  \n  \n\n\n   # indented   comment    ###########\n",
    "result = self._cache.get(key) or compute(key, *args, **kwargs)\n",
]
# Fragments that exercise every branch of the pre-tokenizer: blanks before blanks/newlines/\r, lone \r, \v, \f,
# control characters, identifiers with digits, punctuation runs, special-token strings, non-ASCII letters/digits,
# non-ASCII whitespace.
FRAGMENTS = ["def", " x", "_a1", "self", "return", "  ", "    ", "\t", " \t ", "\n", "\n\n", "\r\n", "\r", " \r",
             "\v", "\f", " ", "1", "42", "3.14", "(", ")", ":", "==", "->", " #", "'''", "\"", "\\", "\x00", "\x1c",
             "\x1f", "\x7f", "\x08", "**", "<", "|>"] + SPECIAL_TOKENS
NON_ASCII = ["é", "ü", "中文", "\u00a0", "\u3000", "\u2028", "٣", "ñame", "a\u0301", "😀", "\x85"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    corpus = CODE + ["".join(random.Random(s).choice(FRAGMENTS) for _ in range(300)) for s in range(20)]
    t = train_code_tokenizer(corpus, 600, str(tmp_path_factory.mktemp("bpe")))
    assert t._fast is not None  # the seam picked the fast encoder for our code BPE
    return t


@pytest.fixture(scope="module")
def spec(tok):
    return json.loads(tok._files["tokenizer.json"])


def hf_ids(tok, text):
    return tok.backend.encode(text, add_special_tokens=False).ids


def fragment_text(draw_list):
    return "".join(draw_list)


ascii_text = st.one_of(
    st.lists(st.sampled_from(FRAGMENTS), max_size=40).map(fragment_text),
    st.text(alphabet=st.characters(max_codepoint=127), max_size=60),
)
mixed_text = st.lists(st.sampled_from(FRAGMENTS + NON_ASCII), max_size=40).map(fragment_text)


@settings(max_examples=400, deadline=None)
@given(ascii_text)
def test_ascii_text_is_encoded_in_cpp_with_identical_ids(tok, text):
    cpp = tok._fast._cpp.encode(text)
    assert cpp is not None  # took the C++ path
    assert cpp == hf_ids(tok, text)
    assert tok.encode(text) == hf_ids(tok, text)


@settings(max_examples=200, deadline=None)
@given(ascii_text)
def test_pretokenizer_pieces_equal_the_regex(tok, text):
    expected = [offsets for _, offsets in tok.backend.pre_tokenizer.pre_tokenize_str(text)]
    assert [tuple(p) for p in tok._fast._cpp.pieces(text)] == expected


@settings(max_examples=200, deadline=None)
@given(ascii_text)
def test_long_word_merge_algorithm_equals_short_one(tok, spec, text):
    heap_only = fast_bpe.FastBPE(spec, tok.backend, ext, long_word=1)  # every word through the priority queue
    assert heap_only.encode_batch([text]) == [hf_ids(tok, text)]


@settings(max_examples=300, deadline=None)
@given(st.lists(mixed_text, max_size=6))
def test_non_ascii_text_falls_back_and_is_identical(tok, texts):
    assert tok.encode_batch(texts) == [hf_ids(tok, t) for t in texts]


def test_mostly_ascii_document_sends_only_its_non_ascii_lines_to_tokenizers(tok):
    code = "".join(c for c in CODE if "\r" not in c)
    text = code + "s = 'café'  # ü\n\n" + code + "x = 1 # 中文"
    segments = fast_bpe.FastBPE._segments(text)
    assert "".join(s for _, s in segments) == text
    assert [a for a, _ in segments] == [True, False, True, False]
    assert segments[1][1] == "s = 'café'  # ü\n\n"
    assert tok.encode(text) == hf_ids(tok, text)
    # Whitespace other than space/tab/newline anywhere: the whole text goes to `tokenizers`.
    assert fast_bpe.FastBPE._segments("a\r\nb é\n") == [(False, "a\r\nb é\n")]


def test_long_words_and_special_strings(tok):
    for text in [" " * 5000, "#" * 3000 + "\n", "x" * 4000, "\t \t" * 700 + "\r\n", "1" * 300,
                 "<|endoftext|><fim_prefix>" * 50, "", "\n", " ", "\r"]:
        assert tok.encode(text) == hf_ids(tok, text)


def test_switch_off_uses_tokenizers(tok, monkeypatch):
    monkeypatch.setenv(fast_bpe.ENV_SWITCH, "0")
    plain = HFTokenizer(dict(tok._files))
    assert plain._fast is None
    text = "".join(CODE) * 3
    assert plain.encode(text) == tok.encode(text) == hf_ids(tok, text)


def test_other_bpe_options_are_not_fast(spec):
    assert fast_bpe.supported_model(spec)
    for key, value in [("ignore_merges", True), ("continuing_subword_prefix", "##"), ("dropout", 0.1)]:
        assert not fast_bpe.supported_model({**spec, "model": {**spec["model"], key: value}})
    assert not fast_bpe.supported_model({**spec, "post_processor": {"type": "ByteLevel"}})


def test_stdlib_sources_identical(tmp_path):
    from megatron_code.data.corpus import iter_source_tree, stdlib_root

    docs = [d["text"] for d in iter_source_tree(stdlib_root(), extensions=[".py"], skip_bad_files=True,
                                                 exclude_dirs=("site-packages", "dist-packages"))]
    docs = random.Random(0).sample(docs, min(300, len(docs)))
    tok = train_code_tokenizer(docs[::10], 3000, str(tmp_path / "tok"))
    assert tok._fast is not None
    assert any(not d.isascii() for d in docs)
    reference = build_tokenizer("HuggingFaceTokenizer", tokenizer_model=str(tmp_path / "tok")).backend
    got = tok.encode_batch(docs)
    for text, ids in zip(docs, got):
        assert ids == reference.encode(text, add_special_tokens=False).ids
