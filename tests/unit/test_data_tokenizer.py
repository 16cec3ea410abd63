"""Tokenizers: three formats behind one interface, code-aware training, specials, exact round trip."""

import json
import os

import pytest

from megatron_code.data.tokenizer import (SPECIAL_TOKENS, Tokenizer, TokenizerError, build_tokenizer,
                                          load_tokenizer, train_code_tokenizer)

CODE = [
    "def add(a, b):\n    return a + b\n\n\nclass Foo:\n\tx = 12345\n",
    "import os\nif __name__ == '__main__':\n    print(os.getcwd())  # 'é' ü 中文 \U0001f600\r\n",
    "for i in range(10):\n        for j in range(i):\n            yield i * j\n",
    "x = {'a': [1, 2, 3], \"b\": None}\n    \n   \n",
] * 20

TRICKY = [
    "",
    " ",
    "\n\n\n",
    "    \t  \n  x",
    "a <|endoftext|> b <fim_prefix>",
    "\u2581 weird \u2581\u2581 pieces",
    "tab\tsep\tvalues\r\n",
    "0123456789 3.14159e-10 0x1F",
    "emoji \U0001f600 and CJK 中文 and combining e\u0301",
    "\x00\x01 control \x7f",
]


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    return train_code_tokenizer(CODE, 400, str(tmp_path_factory.mktemp("bpe")))


def test_specials_registered_up_front(bpe):
    assert isinstance(bpe, Tokenizer)
    assert [bpe.special_tokens[t] for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert bpe.eod == 0 and bpe.pad == 1
    assert 264 < bpe.vocab_size <= 400  # tiny corpus may run out of merges


@pytest.mark.parametrize("text", TRICKY + CODE[:4])
def test_bpe_round_trip_exact(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_special_strings_in_text_are_plain_text(bpe):
    ids = bpe.encode("<|endoftext|><fim_middle>")
    assert bpe.eod not in ids and bpe.special_tokens["<fim_middle>"] not in ids
    assert bpe.decode(ids) == "<|endoftext|><fim_middle>"
    # ids of specials decode to their strings
    assert bpe.decode([bpe.special_tokens["<fim_prefix>"]] + bpe.encode("x") + [bpe.eod]) == "<fim_prefix>x<|endoftext|>"


def test_code_pretokenization(bpe):
    pieces = [p for p, _ in bpe.backend.pre_tokenizer.pre_tokenize_str("x = 1234\n\n    y\n")]
    assert pieces.count("1") == 1 and pieces.count("4") == 1  # digits split one by one
    assert "ĊĊ" in pieces  # newline run kept as one piece (byte-level: \n -> Ċ)
    assert "ĠĠĠ" in pieces  # indentation run kept


def test_encode_batch_matches_encode(bpe):
    assert bpe.encode_batch(TRICKY) == [bpe.encode(t) for t in TRICKY]


def test_fingerprint_save_load(bpe, tmp_path):
    bpe.save(str(tmp_path / "t"))
    again = load_tokenizer(str(tmp_path / "t"))
    assert again.fingerprint() == bpe.fingerprint()
    via_hf = build_tokenizer("HuggingFaceTokenizer", tokenizer_model=str(tmp_path / "t" / "tokenizer.json"))
    assert via_hf.fingerprint() == bpe.fingerprint()
    assert via_hf.encode(CODE[1]) == bpe.encode(CODE[1])
    other = train_code_tokenizer(CODE, 300, str(tmp_path / "other"))
    assert other.fingerprint() != bpe.fingerprint()


def test_trained_directory_is_a_transformers_and_megatron_lm_tokenizer(bpe, tmp_path):
    """train_code_tokenizer's directory carries tokenizer_config.json naming <|endoftext|> as eos_token: Megatron-LM's
    HuggingFaceTokenizer appends that as EOD (without it its preprocess_data.py failed on a None id), and
    transformers' AutoTokenizer encodes like ours with eos = our EOD."""
    import transformers

    out = str(tmp_path / "bpe")
    ours = train_code_tokenizer(CODE, 400, out)
    config = json.load(open(os.path.join(out, "tokenizer_config.json")))
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast" and config["eos_token"] == "<|endoftext|>"
    assert json.load(open(os.path.join(out, "special_tokens_map.json")))["eos_token"] == "<|endoftext|>"
    hf = transformers.AutoTokenizer.from_pretrained(out)
    assert hf.eos_token_id == ours.eod == bpe.eod
    assert hf(CODE[1], add_special_tokens=False)["input_ids"] == ours.encode(CODE[1])
    assert load_tokenizer(out).fingerprint() == ours.fingerprint()  # the extra files change nothing of ours


def test_gpt2_vocab_merges(bpe, tmp_path):
    d = tmp_path / "gpt2"
    d.mkdir()
    bpe.backend.model.save(str(d))  # writes vocab.json + merges.txt
    tok = build_tokenizer("GPT2BPETokenizer", vocab_file=str(d / "vocab.json"), merge_file=str(d / "merges.txt"))
    assert tok.eod == json.load(open(d / "vocab.json"))["<|endoftext|>"]
    for text in TRICKY[1:] + CODE[:4]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.eod not in tok.encode("<|endoftext|>")


@pytest.mark.parametrize("kind", ["sentencepiece-unigram", "sentencepiece-bpe"])
def test_sentencepiece_round_trip(kind, tmp_path):
    tok = train_code_tokenizer(CODE, 420, str(tmp_path / kind), kind=kind)
    assert tok.tokenizer_type == "SentencePieceTokenizer"
    assert set(tok.special_tokens) == set(SPECIAL_TOKENS)
    for text in [t for t in TRICKY if "\u2581" not in t] + CODE[:4]:
        assert tok.decode(tok.encode(text)) == text, repr(text)
    assert tok.eod not in tok.encode("<|endoftext|>")
    again = build_tokenizer("SentencePieceTokenizer", tokenizer_model=str(tmp_path / kind / "tokenizer.model"))
    assert again.fingerprint() == tok.fingerprint() and again.encode(CODE[0]) == tok.encode(CODE[0])


def test_errors(tmp_path):
    with pytest.raises(TokenizerError, match="unknown --tokenizer-type"):
        build_tokenizer("BertWordPiece")
    with pytest.raises(FileNotFoundError, match="not found"):
        build_tokenizer("HuggingFaceTokenizer", tokenizer_model=str(tmp_path / "nope.json"))
    with pytest.raises(TokenizerError, match="--vocab-file"):
        build_tokenizer("GPT2BPETokenizer", vocab_file="v.json")
    with pytest.raises(TokenizerError, match="too small"):
        train_code_tokenizer(CODE, 100, str(tmp_path / "x"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="could not read"):
        build_tokenizer("HuggingFaceTokenizer", tokenizer_model=str(tmp_path / "bad.json"))


def test_missing_eod_is_an_error(tmp_path):
    from tokenizers import Tokenizer as HF
    from tokenizers import models, pre_tokenizers

    hf = HF(models.BPE(vocab={"a": 0, "b": 1}, merges=[]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel()
    hf.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(TokenizerError, match="<\\|endoftext\\|>"):
        build_tokenizer("HuggingFaceTokenizer", tokenizer_model=str(tmp_path))
    hf = HF(models.BPE(vocab={"a": 0, "b": 1, "</s>": 2}, merges=[]))
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = build_tokenizer("HuggingFaceTokenizer", tokenizer_model=str(tmp_path))
    assert tok.eod == 2 and tok.pad == 2 and tok.special_tokens == {}


def test_train_from_files(tmp_path):
    files = []
    for i, text in enumerate(CODE[:4]):
        p = tmp_path / f"f{i}.py"
        p.write_text(text, newline="")
        files.append(str(p))
    jl = tmp_path / "c.jsonl"
    jl.write_text("".join(json.dumps({"text": t}) + "\n" for t in CODE[:8]))
    tok = train_code_tokenizer(files + [str(jl)], 320, str(tmp_path / "tok"))
    assert os.path.isfile(tmp_path / "tok" / "tokenizer.json")
    assert tok.decode(tok.encode(CODE[1])) == CODE[1]


def test_sentencepiece_too_small_vocab_is_clear(tmp_path):
    with pytest.raises(TokenizerError, match="SentencePiece training failed"):
        train_code_tokenizer(CODE, 280, str(tmp_path / "sp"), kind="sentencepiece-unigram")


def test_pickle_round_trip(bpe, tmp_path):
    import pickle

    again = pickle.loads(pickle.dumps(bpe))
    assert again.fingerprint() == bpe.fingerprint() and again.encode(CODE[0]) == bpe.encode(CODE[0])
    sp = train_code_tokenizer(CODE, 420, str(tmp_path / "sp"), kind="sentencepiece-unigram")
    assert pickle.loads(pickle.dumps(sp)).encode(CODE[0]) == sp.encode(CODE[0])


def test_long_texts_encoded_in_line_pieces_give_identical_ids(bpe):
    from megatron_code.data.tokenizer import _line_pieces

    assert bpe._piecewise  # our code tokenizer qualifies
    block = "".join(CODE[:4]).replace("\r", "") + "  \n\n\n\t\tx = 1  \n    \n é\u0301 中文\n" + " " * 9 + "y\n"
    long = block * 200
    assert len(_line_pieces(long)) > 5 and "".join(_line_pieces(long)) == long
    whole = bpe.backend.encode(long, add_special_tokens=False).ids
    assert bpe.encode(long) == whole and bpe.encode_batch(["a", long, ""]) == [bpe.encode("a"), whole, []]
    unsafe = long + "\x0c\n  \r\n z"  # form feed / CR: pieces are not provably independent -> one piece
    assert _line_pieces(unsafe) == [unsafe]
    assert bpe.encode(unsafe) == bpe.backend.encode(unsafe, add_special_tokens=False).ids
    assert bpe.decode(bpe.encode(long)) == long


def test_foreign_pretokenizer_is_not_split(bpe, tmp_path):
    d = tmp_path / "gpt2"
    d.mkdir()
    bpe.backend.model.save(str(d))
    tok = build_tokenizer("GPT2BPETokenizer", vocab_file=str(d / "vocab.json"), merge_file=str(d / "merges.txt"))
    assert not tok._piecewise
