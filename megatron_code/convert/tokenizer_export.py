"""Tokenizer files for a `transformers` model directory, and back.

Export writes ``tokenizer.json`` (the exact `tokenizers` model our HF/GPT-2 BPE backends run), a
``tokenizer_config.json`` naming the stock ``PreTrainedTokenizerFast`` class (so ``AutoTokenizer`` needs no custom
code) with our special tokens (``<|endoftext|>`` as eos/bos/unk, ``<pad>`` as pad when present, the FIM/MIM
sentinels as additional special tokens), and ``special_tokens_map.json``. After writing, the directory is loaded
with ``AutoTokenizer`` and must encode a probe text exactly like ours. SentencePiece models are converted by
transformers' converter (see :func:`_sentencepiece_json` for what is exact).

One documented difference: our ``encode`` treats special-token *strings* inside text as plain text (so data cannot
forge document boundaries); `transformers` tokenizers match them as specials. Ordinary text encodes identically.

Import reads the directory's ``tokenizer.json`` into our HFTokenizer; it needs ``<|endoftext|>`` in the vocabulary
(our EOD). If it is missing, :func:`import_tokenizer` returns None and the caller reports it.
"""

from __future__ import annotations

import logging
import os

from ..errors import UserError
from ..data.tokenizer import HFTokenizer, Tokenizer, TokenizerError, write_transformers_config

log = logging.getLogger(__name__)

PROBE = "def add(a, b):\n    return a + b  # sum\n\n\tx = [1, 22, 333]\nprint('héllo wörld', x)\n"


class TokenizerExportError(UserError, ValueError):
    """The tokenizer cannot be written as an exact `transformers` tokenizer."""


def _backend_json(tok: Tokenizer) -> str:
    if "tokenizer.json" in tok._files:  # byte-identical copy: an import gets back the same fingerprint
        return tok._files["tokenizer.json"].decode("utf-8")
    if isinstance(tok, HFTokenizer):  # includes GPT2BPETokenizer (built as a tokenizers.Tokenizer)
        # GPT-2 vocab.json + merges.txt: serialize the tokenizers object we built from them. Our live object has
        # encode_special_tokens=True; clear it in the copy so the file keeps transformers' default matching.
        from tokenizers import Tokenizer as _HF

        copy = _HF.from_str(tok.backend.to_str())
        copy.encode_special_tokens = False
        return copy.to_str()
    if tok.tokenizer_type == "SentencePieceTokenizer":
        return _sentencepiece_json(tok)
    raise TokenizerExportError(f"cannot export tokenizer type {tok.tokenizer_type!r}")


def _sentencepiece_json(tok: Tokenizer) -> str:
    """A SentencePiece model (BPE or unigram, byte fallback) as a `tokenizers` tokenizer.json, built by transformers'
    own converter from the model's settings (SpmConverter.build_tokenizer_from_spm_proto: its normalizer spec,
    BPE merges ranked by piece score or the unigram scores, byte fallback). Control pieces (our specials) become
    special added tokens. The unknown, control and byte pieces stay out of the unigram search (see below).

    Exactness (tests/convert/test_tokenizer_export.py, stdlib corpus and random unicode): BPE encodes identically.
    Unigram: both libraries run the same Viterbi (same candidate order, first of equal scores kept), SentencePiece
    in float32 and `tokenizers` in float64. A model whose piece scores lie on a grid 2**-k (every unigram model
    our tools train: data.tokenizer.quantize_unigram_scores, k = 3) encodes identically for every input whose path
    scores stay below 2**(24-k) in magnitude (2**21 at k = 3: the whole Python standard library, largest file
    757 KB, is identical). A model with raw float32 scores (a third-party one) can differ on near-ties, where the
    two roundings pick different paths: 62 of 1,786 stdlib files with a 1,200-piece model; :func:`unigram_grid`
    tells which case a model is, and the export logs it."""
    try:
        from tokenizers import AddedToken
        from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf
    except ImportError as exc:
        raise TokenizerExportError(f"exporting a SentencePiece tokenizer needs transformers and protobuf ({exc}): "
                                   f"pip install 'megatron_code[hf]'") from None
    proto = import_protobuf().ModelProto()
    proto.ParseFromString(tok._files["tokenizer.model"])
    kind = proto.trainer_spec.model_type  # 1 unigram, 2 BPE (sentencepiece_model.proto)
    if kind == 2:
        vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    elif kind == 1:
        # SentencePiece's trie holds only normal and user-defined pieces (model_interface.cc: unknown, control and
        # byte pieces are reserved ids, never matched in text); `tokenizers`' Unigram matches every vocabulary
        # string, so the text "<unk>" or "<0x41>" would become that one piece (byte pieces score 0, the best
        # score). A score no real path reaches keeps them out; byte fallback still finds "<0x41>" by name. It also
        # lowers `tokenizers`' unknown-character score (min score - 10) below SentencePiece's (min normal score -
        # 10); that changes nothing where the unknown piece is the only way to cover a character (every character
        # of our tokenizers' training text is a piece of its own, character_coverage=1.0), and can differ only
        # where a third-party model has a character inside longer pieces but not as a piece of its own.
        unmatchable = -1e9
        vocab = [(p.piece, p.score if p.type in (1, 4) else unmatchable) for p in proto.pieces]
        k = unigram_grid(proto)
        if k is None:
            log.warning("SentencePiece unigram model with unquantized scores: the exported tokenizer.json can encode "
                        "near-ties differently from SentencePiece (float32 vs float64 path sums; 62 of 1,786 stdlib "
                        "files for a 1,200-piece model). Models trained by tools/train_tokenizer.py are exact.")
        else:
            log.info("SentencePiece unigram scores on the grid 2**-%d: the export encodes identically for inputs "
                     "whose path scores stay below 2**%d in magnitude", k, 24 - k)
    else:
        raise TokenizerExportError(f"SentencePiece model type {kind} (char/word) cannot be exported: BPE and "
                                   f"unigram models only")
    backend = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, legacy=False)
    control = [p.piece for p in proto.pieces if p.type == 3]  # CONTROL
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in control])
    return backend.to_str()


def unigram_grid(proto, finest: int = 8) -> int | None:
    """The smallest k <= `finest` such that every normal piece's score is a multiple of 2**-k (then SentencePiece's
    float32 path sums are exact below 2**(24-k) and agree with `tokenizers`' float64 ones), or None."""
    scores = [p.score for p in proto.pieces if p.type == 1]
    for k in range(finest + 1):
        if all((s * 2 ** k).is_integer() for s in scores):
            return k
    return None


def _with_lead(text: str, lead: str, lead_id: int) -> str:
    """tokenizer.json whose post-processor puts `lead` before every text (applied with add_special_tokens=True,
    transformers' default): a MIM model's prompts then start with <l2r> without the user asking."""
    from tokenizers import Tokenizer as _HF
    from tokenizers.processors import TemplateProcessing

    backend = _HF.from_str(text)
    backend.post_processor = TemplateProcessing(single=f"{lead} $A", pair=f"{lead} $A $B:1",
                                                special_tokens=[(lead, lead_id)])
    return backend.to_str()


def export_tokenizer(tok: Tokenizer, out_dir: str, model_max_length: int, lead: str | None = None) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `out_dir`; verify that
    `transformers` loads them and encodes a probe text exactly like `tok`. `lead` (MIM: "<l2r>") is prefixed to
    every encoded text when special tokens are added."""
    text = _backend_json(tok)  # raises before anything is written when the tokenizer cannot be exported
    if lead is not None:
        text = _with_lead(text, lead, tok.special_tokens[lead])
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(text)
    write_transformers_config(tok, out_dir, model_max_length=model_max_length,
                              megatron_code_tokenizer_type=tok.tokenizer_type)
    check_exported_tokenizer(tok, out_dir)
    if lead is not None:
        from transformers import AutoTokenizer

        if AutoTokenizer.from_pretrained(out_dir)(PROBE)["input_ids"] != [tok.special_tokens[lead]] + tok.encode(PROBE):
            raise TokenizerExportError(f"the exported tokenizer does not put {lead} before the text")


def check_exported_tokenizer(tok: Tokenizer, out_dir: str, text: str = PROBE) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(out_dir)
    ours, theirs = tok.encode(text), hf(text, add_special_tokens=False)["input_ids"]
    if ours != theirs:
        raise TokenizerExportError(f"the exported tokenizer encodes differently from ours ({theirs[:12]} vs "
                                   f"{ours[:12]}); this tokenizer cannot be exported exactly")
    if hf.eos_token_id != tok.eod:
        raise TokenizerExportError(f"exported eos id {hf.eos_token_id} != our EOD {tok.eod}")


def import_tokenizer(hf_dir: str) -> Tokenizer | None:
    """Our tokenizer from a transformers directory's tokenizer.json; None when there is none or it lacks our EOD
    token ``<|endoftext|>``."""
    path = os.path.join(hf_dir, "tokenizer.json")
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        data = f.read()
    try:
        return HFTokenizer({"tokenizer.json": data})
    except TokenizerError:
        return None
