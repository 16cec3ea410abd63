"""SentencePiece export: BPE and unigram models with byte fallback (trained here on the Python standard library)
become fast tokenizer.json files that AutoTokenizer loads and that encode exactly like SentencePiece on the stdlib
corpus and on random unicode (our unigram models have quantized scores, data.tokenizer.quantize_unigram_scores).
A third-party unigram model with raw float32 scores has one documented difference (near-ties decided by
SentencePiece's float32 sums, see tokenizer_export), asserted to be exactly that."""

from __future__ import annotations

import logging
import os
import random

import pytest
import torch

from megatron_code.config.model import ModelConfig
from megatron_code.convert import export_model, import_model
from megatron_code.data.corpus import iter_source_tree, stdlib_root
from megatron_code.convert.tokenizer_export import unigram_grid
from megatron_code.data.tokenizer import (UNIGRAM_SCORE_STEP, SentencePieceTokenizer, _spm_train,
                                          train_code_tokenizer)
from megatron_code.model import GPT

transformers = pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")


@pytest.fixture(scope="module")
def stdlib_texts():
    docs = [d["text"] for d in iter_source_tree(stdlib_root(), extensions=[".py"], skip_bad_files=True,
                                                exclude_dirs=("site-packages", "dist-packages"))]
    assert len(docs) > 500
    return docs


def random_unicode(n: int, seed: int = 0) -> list[str]:
    """Texts mixing ASCII, whitespace runs, 2/3/4-byte UTF-8 (incl. astral planes, no surrogates) and U+2581."""
    rng = random.Random(seed)

    def char() -> str:
        pick = rng.randrange(7)
        if pick == 0:
            return chr(rng.randrange(0x80, 0x800))
        if pick == 1:
            return chr(rng.choice([rng.randrange(0x800, 0xD800), rng.randrange(0xE000, 0x10000)]))
        if pick == 2:
            return chr(rng.randrange(0x10000, 0x110000))
        if pick == 3:
            return rng.choice([" ", "  ", "    ", "\n", "\t", "\r\n", "\u2581"])
        return chr(rng.randrange(0x21, 0x7F))
    return ["".join(char() for _ in range(rng.randrange(1, 80))) for _ in range(n)]


# Strings that spell vocabulary entries SentencePiece never matches in text (byte and unknown pieces).
LITERALS = ["x = '<0x41>'  # <0x0A><unk>", "<0xFF><0x00>", "s = '<unk>'\n"]


def export_sp(kind: str, texts: list[str], tmp_path, tok=None):
    tok = tok or train_code_tokenizer(texts[::40], 1200, str(tmp_path / kind), kind=kind)
    cfg = ModelConfig(num_layers=1, hidden_size=32, num_attention_heads=2, vocab_size=tok.vocab_size,
                      position_embedding="rope", norm="rmsnorm", activation="swiglu")
    model = GPT(cfg)
    model.init_weights(torch.Generator().manual_seed(0))
    out = str(tmp_path / f"hf-{kind}")
    export_model(cfg, model.state_dict(), out, tokenizer=tok)
    return tok, transformers.AutoTokenizer.from_pretrained(out), out


def score(tok, ids) -> float:
    return sum(float(tok._sp.get_score(i)) for i in ids)


def proto_of(tok):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tok._files["tokenizer.model"])
    return proto


@pytest.mark.parametrize("kind", ["sentencepiece-bpe", "sentencepiece-unigram"])
def test_sentencepiece_export_encodes_like_sentencepiece(kind, stdlib_texts, tmp_path):
    tok, hf, out = export_sp(kind, stdlib_texts, tmp_path)
    assert isinstance(hf, transformers.PreTrainedTokenizerFast)
    assert hf.eos_token_id == tok.eod and hf.pad_token_id == tok.pad
    for special in ("<fim_prefix>", "<fim_middle>", "<l2r>", "<r2l>"):
        assert hf.convert_tokens_to_ids(special) == tok.token_to_id(special)
    if kind == "sentencepiece-unigram":  # trained with scores on the 1/8 grid: exact (see quantize_unigram_scores)
        assert unigram_grid(proto_of(tok)) == 3 and UNIGRAM_SCORE_STEP == 2.0 ** -3
    # Every third stdlib file in the suite; FULL_STDLIB=1 checks all of them (the figure in docs/export.md).
    texts = stdlib_texts[::1 if os.environ.get("FULL_STDLIB") == "1" else 3] + random_unicode(500) + LITERALS
    theirs_all = hf(texts, add_special_tokens=False)["input_ids"]
    for text, ours, theirs in zip(texts, tok._sp.encode(texts), theirs_all):
        assert ours == theirs, f"{kind} differs on {text[:80]!r}"
        assert hf.decode(theirs) == tok.decode(ours)
    # byte fallback really used: a character no piece covers becomes its UTF-8 bytes in both
    rare = "\U0001F600\u4e2d"
    assert tok.encode(rare) == hf(rare, add_special_tokens=False)["input_ids"]
    assert [tok._sp.id_to_piece(i)[:3] for i in tok.encode(rare)] == ["<0x"] * 7
    # the import reads it back as a HuggingFaceTokenizer that encodes the same
    _, _, _, back = import_model(out)
    assert back is not None and back.encode(stdlib_texts[0]) == tok.encode(stdlib_texts[0])


def test_unquantized_unigram_differs_only_on_float32_near_ties(stdlib_texts, tmp_path, caplog):
    """A unigram model as SentencePiece trains it (raw float32 scores, e.g. a third-party PaLM-style model): the
    export warns, and wherever it encodes differently the difference is a near-tie: transformers' path is the
    float64 optimum, SentencePiece's is worse by no more than float32 accumulation error along its path."""
    import io

    import sentencepiece as spm

    raw = io.BytesIO()
    _spm_train(spm, iter(stdlib_texts[::40]), raw, 1200, "unigram")
    tok = SentencePieceTokenizer({"tokenizer.model": raw.getvalue()})
    assert unigram_grid(proto_of(tok)) is None
    with caplog.at_level(logging.WARNING, logger="megatron_code.convert.tokenizer_export"):
        tok, hf, _ = export_sp("raw-unigram", stdlib_texts, tmp_path, tok=tok)
    assert "near-ties" in caplog.text
    texts = stdlib_texts[1::6] + random_unicode(200, seed=1) + LITERALS
    for text, ours, theirs in zip(texts, tok._sp.encode(texts), hf(texts, add_special_tokens=False)["input_ids"]):
        if ours != theirs:
            ours_score, their_score = score(tok, ours), score(tok, theirs)
            assert their_score >= ours_score, text[:80]
            assert their_score - ours_score <= len(ours) * 2.0 ** -24 * abs(ours_score), text[:80]
            assert hf.decode(theirs) == tok.decode(ours)
