"""Megatron's NullTokenizer, TikTokenizer (its JSON ranks layout, and a plain .tiktoken file) and Llama2Tokenizer."""

from __future__ import annotations

import base64
import json

import pytest

from megatron_code.config.cli import parse_args
from megatron_code.data.tokenizer import TokenizerError, build_tokenizer, load_tokenizer

MERGES = [b"de", b"def", b"  ", b"    ", b"re", b"ret", b"retu", b"return"]


def _ranks() -> list[bytes]:
    return [bytes([i]) for i in range(256)] + MERGES


def test_null_tokenizer_is_megatron_lms(tmp_path):
    tok = build_tokenizer("NullTokenizer", vocab_size=100)
    assert tok.vocab_size == 100 and tok.eod == 99  # Megatron-LM: ids 0..N-1, eod N-1
    assert tok.encode("5 17 42") == [5, 17, 42] and tok.encode("") == []
    assert tok.decode([5, 17]) == "5 17"
    tok.save(str(tmp_path / "t"))
    again = load_tokenizer(str(tmp_path / "t"))
    assert again.vocab_size == 100 and again.fingerprint() == tok.fingerprint()
    with pytest.raises(TokenizerError, match="--vocab-size"):
        build_tokenizer("NullTokenizer")


def test_tiktokenizer_megatron_json_ids(tmp_path):
    path = tmp_path / "tok.json"
    path.write_text(json.dumps([{"rank": i, "token_bytes": base64.b64encode(b).decode(), "token_str": ""}
                                for i, b in enumerate(_ranks())]))
    tok = build_tokenizer("TikTokenizer", str(path))
    # Megatron-LM's layout: 1000 special ids first (<unk> <s> </s> ...), rank r at r + 1000, eod = </s> = 2.
    assert tok.eod == 2 and tok.vocab_size == 1000 + len(_ranks())
    rank = {b: i for i, b in enumerate(_ranks())}
    assert tok.encode("def") == [1000 + rank[b"def"]]
    assert tok.encode("return") == [1000 + rank[b"return"]]
    assert tok.encode("x") == [1000 + ord("x")]
    assert tok.decode(tok.encode("    return x")) == "    return x"
    assert tok.encode("</s>") != [2]  # special strings in text stay text
    # --tiktoken-num-special-tokens and the --vocab-size cap, as Megatron-LM reads them
    small = build_tokenizer("TikTokenizer", str(path), vocab_size=100 + 256, tiktoken_num_special_tokens=100)
    assert small.vocab_size == 356 and small.encode("def") == [100 + ord("d"), 100 + ord("e"), 100 + ord("f")]
    again_dir = tmp_path / "saved"
    tok.save(str(again_dir))
    assert load_tokenizer(str(again_dir)).encode("return") == tok.encode("return")


def test_tiktokenizer_plain_ranks_file_puts_specials_after_the_full_base_vocabulary(tmp_path):
    path = tmp_path / "base.tiktoken"
    path.write_text("".join(f"{base64.b64encode(b).decode()} {i}\n" for i, b in enumerate(_ranks())))
    tok = build_tokenizer("TikTokenizer", str(path))
    n = len(_ranks())
    assert tok.eod == n and tok.special_tokens["<fim_prefix>"] == n + 2  # rows the vocab padding adds anyway
    assert tok.encode("def") == [256 + MERGES.index(b"def")]


def test_cli_tokenizer_types():
    assert parse_args(["--tokenizer-type", "Llama2Tokenizer", "--tokenizer-model", "t.model"]
                      ).job.data.tokenizer_type == "SentencePieceTokenizer"
    job = parse_args(["--tokenizer-type", "NullTokenizer", "--vocab-size", "512", "--mock-data"]).job
    assert job.data.tokenizer_type == "NullTokenizer" and job.model.vocab_size == 512
    job = parse_args(["--tokenizer-type", "TikTokenizer", "--tokenizer-model", "t.json", "--tiktoken-pattern", "v1",
                      "--tiktoken-num-special-tokens", "500"]).job
    assert (job.data.tiktoken_pattern, job.data.tiktoken_num_special_tokens) == ("v1", 500)

