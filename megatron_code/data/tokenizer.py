"""One tokenizer interface over three on-disk formats, plus training a code tokenizer.

Formats (Megatron's ``--tokenizer-type`` names):

- ``HuggingFaceTokenizer``: a Hugging Face ``tokenizers`` ``tokenizer.json`` (byte-level BPE or any other model).
- ``SentencePieceTokenizer``: a SentencePiece ``.model`` (BPE or unigram, ideally with byte fallback).
- ``GPT2BPETokenizer``: GPT-2 style ``vocab.json`` + ``merges.txt`` (byte-level BPE, GPT-2 pre-tokenizer regex).

Contract shared by every backend (see :class:`Tokenizer`): ``encode`` adds no special tokens and never turns a
special-token *string* inside the text into the special id (a corpus that contains the text "<|endoftext|>" must
not be able to forge document boundaries); ``decode`` renders special ids as their strings; ``fingerprint`` hashes
the exact model files so checkpoints can refuse data tokenized with another vocabulary.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Iterable, Sequence

from ..errors import UserError
from ..utils import atomic
from . import fast_bpe

SPECIAL_TOKENS = ["<|endoftext|>", "<pad>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>",
                  "<l2r>", "<r2l>"]

EOD_ALIASES = ("<|end_of_text|>", "</s>", "<eos>")
TOKENIZER_TYPES = ("GPT2BPETokenizer", "HuggingFaceTokenizer", "SentencePieceTokenizer", "NullTokenizer",
                   "TikTokenizer")
_META_FILE = "megatron_code_tokenizer.json"

# Code-aware pre-tokenization (Oniguruma syntax, used by HF `tokenizers`). Pieces, in priority order:
#   newline runs (kept whole, so blank-line structure is one token), spaces/tabs that precede more whitespace
#   (indentation runs: "    x" -> "   " + " x", like GPT-2), an optional space plus an identifier, single
#   digits (numbers split digit by digit), an optional space plus a punctuation run, any other whitespace.
# Every character of the input lands in exactly one piece, so with byte-level encoding decode(encode(x)) == x.
CODE_PRETOKENIZE_REGEX = (
    r"(?:\r?\n)+|[ \t]+(?=[ \t\r\n])| ?[\p{L}_][\p{L}\p{M}\p{N}_]*|\p{N}| ?[^\s\p{L}\p{N}_]+|\s+"
)


# Long documents are encoded in pieces of about this many characters, cut right after a newline run, when that
# provably gives the same ids (see _line_local): measured ~1.3-1.5x less CPU than one call per whole file.
_PIECE_CHARS = 4096
_NEWLINE_RUNS = re.compile(r"\n+")


def _line_local(tokenizer_json: dict) -> bool:
    """True when the tokenizer is our code BPE: no normalizer, CODE_PRETOKENIZE_REGEX split + byte-level, only
    special added tokens. Then no pre-token ever spans the end of a newline run in a text whose only whitespace
    is space, tab and newline (newline runs are whole pieces, no other alternative matches a newline, the only
    lookahead reads within the same line), so encoding line-aligned pieces and concatenating is exact."""
    if tokenizer_json.get("normalizer") is not None or (tokenizer_json.get("model") or {}).get("type") != "BPE":
        return False
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers") or []
    if pre.get("type") != "Sequence" or len(parts) != 2:
        return False
    split, byte_level = parts
    return (split.get("type") == "Split" and split.get("pattern") == {"Regex": CODE_PRETOKENIZE_REGEX}
            and split.get("behavior") == "Isolated" and not split.get("invert")
            and byte_level.get("type") == "ByteLevel" and byte_level.get("use_regex") is False
            and all(t.get("special") for t in tokenizer_json.get("added_tokens") or []))


def _line_pieces(text: str) -> list[str]:
    """``text`` cut after newline runs into pieces of >= _PIECE_CHARS (one piece if short or unsafe)."""
    if len(text) < 2 * _PIECE_CHARS or fast_bpe.UNSAFE_WHITESPACE.search(text):
        return [text]
    pieces, start = [], 0
    for m in _NEWLINE_RUNS.finditer(text, _PIECE_CHARS):
        end = m.end()
        if end - start >= _PIECE_CHARS and end < len(text):
            pieces.append(text[start:end])
            start = end
    pieces.append(text[start:])
    return pieces


class TokenizerError(UserError, ValueError):
    """A tokenizer file is missing, unreadable or inconsistent; the message names the fix."""


class TokenizerFileNotFound(UserError, FileNotFoundError):
    pass


def _read(path: str) -> bytes:
    if not os.path.isfile(path):
        raise TokenizerFileNotFound(f"tokenizer file not found: {path} (check --tokenizer-model/--vocab-file/"
                                    f"--merge-file)")
    with open(path, "rb") as f:
        return f.read()


class Tokenizer:
    """Common interface. Subclasses fill ``_files`` (name -> exact bytes), ``vocab_size`` and implement
    ``_encode``/``_decode_plain``/``_token_to_id``.

    Attributes: ``vocab_size`` (true size incl. specials), ``eod`` (id of ``<|endoftext|>``, else of the first of
    EOD_ALIASES in the vocabulary), ``pad`` (id of
    ``<pad>``, else ``eod``), ``special_tokens`` (the entries of SPECIAL_TOKENS present in the vocabulary).
    """

    tokenizer_type = ""

    def __init__(self, files: dict[str, bytes]):
        self._files = dict(files)
        self.vocab_size = self._vocab_size()
        self.special_tokens = {}
        for tok in SPECIAL_TOKENS:
            tid = self._token_to_id(tok)
            if tid is not None:
                self.special_tokens[tok] = tid
        eod = self.special_tokens.get("<|endoftext|>")
        for alias in EOD_ALIASES:  # foreign tokenizers (Llama/T5 style) name their end-of-document differently
            if eod is None:
                eod = self._token_to_id(alias)
        if eod is None:
            raise TokenizerError(f"{self.tokenizer_type}: the vocabulary has no '<|endoftext|>' (or "
                                 f"{', '.join(EOD_ALIASES)}) token; train the tokenizer with tools/train_tokenizer.py "
                                 f"(which registers it) or add it")
        self.eod = eod
        self.pad = self.special_tokens.get("<pad>", self.eod)
        self._id_to_special = {v: k for k, v in self.special_tokens.items()}
        # Special ids the tokenizer's own template puts around every text (e.g. Llama's <s> from its tokenizer.json
        # post-processor). encode() never adds them; encode_document() does, as Megatron-LM's preprocessing does.
        self.template_prefix, self.template_suffix = self._template()

    def _template(self) -> tuple[list[int], list[int]]:
        return [], []

    # --- backend hooks -------------------------------------------------------------------------------------
    def _vocab_size(self) -> int:
        raise NotImplementedError

    def _token_to_id(self, token: str) -> int | None:
        raise NotImplementedError

    def _encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def _encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self._encode(t) for t in texts]

    def _decode_plain(self, ids: list[int]) -> str:
        raise NotImplementedError

    # --- public interface ----------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; no BOS/EOS added, special-token strings inside ``text`` are ordinary text."""
        return self._encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Same as ``[encode(t) for t in texts]``, faster where the backend batches natively."""
        return self._encode_batch(list(texts))

    @property
    def adds_special_tokens(self) -> bool:
        """True when the tokenizer's own template adds ids around a text (a BOS-adding tokenizer)."""
        return bool(self.template_prefix or self.template_suffix)

    def with_template(self, ids: list[int]) -> list[int]:
        """``ids`` inside the tokenizer's own template: what Megatron-LM's ``tokenizer.tokenize(text)`` returns
        (its HuggingFaceTokenizer calls ``tokenizer(text).input_ids``, its Llama2Tokenizer adds BOS)."""
        return self.template_prefix + ids + self.template_suffix if self.adds_special_tokens else ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; special ids are rendered as their strings (e.g. ``<fim_middle>``)."""
        ids = [int(i) for i in ids]
        out, run = [], []
        for i in ids:  # split at specials so every backend renders them the same way
            special = self._id_to_special.get(i)
            if special is None:
                run.append(i)
                continue
            if run:
                out.append(self._decode_plain(run))
                run = []
            out.append(special)
        if run:
            out.append(self._decode_plain(run))
        return "".join(out)

    def token_to_id(self, token: str) -> int | None:
        return self._token_to_id(token)

    def fingerprint(self) -> str:
        """sha256 hex over the tokenizer type and the exact bytes of its model files (stable across loads)."""
        h = hashlib.sha256(self.tokenizer_type.encode())
        for name in sorted(self._files):
            h.update(b"\0" + name.encode() + b"\0")
            h.update(hashlib.sha256(self._files[name]).digest())
        return h.hexdigest()

    def save(self, directory: str) -> None:
        """Write the model files (byte-identical, so the fingerprint survives) plus a small metadata file that
        :func:`load_tokenizer` reads."""
        os.makedirs(directory, exist_ok=True)
        for name, data in self._files.items():
            atomic.write_bytes(os.path.join(directory, name), data)
        meta = {"tokenizer_type": self.tokenizer_type, "files": sorted(self._files), "vocab_size": self.vocab_size,
                "eod": self.eod, "pad": self.pad, "special_tokens": self.special_tokens,
                "fingerprint": self.fingerprint()}
        atomic.write_text(os.path.join(directory, _META_FILE), json.dumps(meta, indent=2))

    def __reduce__(self):
        # Rebuild from the model bytes (backends' native objects are not reliably picklable).
        return (_rebuild, (type(self), self._files))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, eod={self.eod}, pad={self.pad})"


def _rebuild(cls, files):
    return cls(files)


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizers`` tokenizer.json. Our code BPE (``_line_local``) is encoded by the exact C++
    encoder of fast_bpe.py when it is built (identical ids, ~15x faster; MEGATRON_CODE_FAST_BPE=0 turns it off);
    every other tokenizer.json goes through ``tokenizers``."""

    tokenizer_type = "HuggingFaceTokenizer"

    def __init__(self, files: dict[str, bytes], hf_tokenizer=None):
        from tokenizers import Tokenizer as _HF

        try:
            self._tok = hf_tokenizer or _HF.from_str(files["tokenizer.json"].decode("utf-8"))
        except Exception as exc:  # noqa: BLE001 - any parse failure is a user file problem
            raise TokenizerError(f"could not read tokenizer.json: {exc}") from None
        # Special-token strings in the text are encoded as plain text (see module docstring).
        self._tok.encode_special_tokens = True
        self._tok.no_padding()
        self._tok.no_truncation()
        self._piecewise = False
        self._fast = None  # exact C++ encoder for our code BPE (fast_bpe.py), when built and not disabled
        if "tokenizer.json" in files:
            try:
                spec = json.loads(files["tokenizer.json"])
                self._piecewise = _line_local(spec)
            except ValueError:
                self._piecewise = False
            if self._piecewise and fast_bpe.supported_model(spec):
                ext = fast_bpe.load_extension()
                if ext is not None:
                    self._fast = fast_bpe.FastBPE(spec, self._tok, ext)
        super().__init__(files)

    def _vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def _template(self) -> tuple[list[int], list[int]]:
        """The post-processor's ids around a single text: a probe encoded with and without special tokens."""
        if self._tok.post_processor is None:
            return [], []
        probe = "a"
        plain = self._tok.encode(probe, add_special_tokens=False).ids
        full = self._tok.encode(probe, add_special_tokens=True).ids
        for i in range(len(full) - len(plain) + 1):
            if full[i:i + len(plain)] == plain:
                return full[:i], full[i + len(plain):]
        raise TokenizerError("the tokenizer.json post-processor changes the text's ids (not only adds special tokens "
                             "around them); such a tokenizer is not supported")

    def _token_to_id(self, token):
        return self._tok.token_to_id(token)

    def _encode(self, text):
        if self._fast is not None or (self._piecewise and len(text) >= 2 * _PIECE_CHARS):
            return self._encode_batch([text])[0]
        return self._tok.encode(text, add_special_tokens=False).ids

    def _encode_batch(self, texts):
        if self._fast is not None:
            return self._fast.encode_batch(texts)
        # encode_batch_fast skips offset tracking, which we never use.
        if not self._piecewise:
            return [e.ids for e in self._tok.encode_batch_fast(texts, add_special_tokens=False)]
        pieces, owner = [], []
        for i, text in enumerate(texts):
            for p in _line_pieces(text):
                pieces.append(p)
                owner.append(i)
        out = [[] for _ in texts]
        for i, enc in zip(owner, self._tok.encode_batch_fast(pieces, add_special_tokens=False)):
            out[i].extend(enc.ids)
        return out

    def _decode_plain(self, ids):
        return self._tok.decode(ids, skip_special_tokens=False)

    @property
    def backend(self):
        """The underlying ``tokenizers.Tokenizer`` (for HF export)."""
        return self._tok


class GPT2BPETokenizer(HFTokenizer):
    """GPT-2 ``vocab.json`` + ``merges.txt``: byte-level BPE with GPT-2's pre-tokenizer regex."""

    tokenizer_type = "GPT2BPETokenizer"

    def __init__(self, files: dict[str, bytes]):
        from tokenizers import Tokenizer as _HF
        from tokenizers import decoders, models, pre_tokenizers

        try:
            vocab = json.loads(files["vocab.json"].decode("utf-8"))
            merges = []
            for line in files["merges.txt"].decode("utf-8").splitlines():
                if line.startswith("#version") or not line.strip():
                    continue
                a, b = line.split()
                merges.append((a, b))
            model = models.BPE(vocab=vocab, merges=merges)
        except Exception as exc:  # noqa: BLE001
            raise TokenizerError(f"could not read GPT-2 vocab.json/merges.txt: {exc}") from None
        tok = _HF(model)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        super().__init__(files, hf_tokenizer=tok)


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model. Specials must be control or user-defined pieces; control pieces are never
    matched in text (user-defined ones are, by SentencePiece's design)."""

    tokenizer_type = "SentencePieceTokenizer"

    def __init__(self, files: dict[str, bytes]):
        import sentencepiece as spm

        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(files["tokenizer.model"])
        except Exception as exc:  # noqa: BLE001
            raise TokenizerError(f"could not read SentencePiece model: {exc}") from None
        super().__init__(files)

    def _vocab_size(self):
        return self._sp.get_piece_size()

    def _token_to_id(self, token):
        tid = self._sp.piece_to_id(token)
        return tid if self._sp.id_to_piece(tid) == token else None

    def _encode(self, text):
        return self._sp.encode(text, out_type=int)

    def _encode_batch(self, texts):
        return self._sp.encode(list(texts), out_type=int)

    def _decode_plain(self, ids):
        return self._sp.decode(ids)


def build_tokenizer(tokenizer_type: str, tokenizer_model: str | None = None, vocab_file: str | None = None,
                    merge_file: str | None = None, vocab_size: int | None = None,
                    tiktoken_pattern: str | None = None, tiktoken_num_special_tokens: int | None = None) -> Tokenizer:
    """Load a tokenizer by Megatron's type name. ``tokenizer_model`` is a tokenizer.json file or a directory
    holding one (HuggingFaceTokenizer), a ``.model`` file (SentencePieceTokenizer) or a tiktoken ranks file
    (TikTokenizer). NullTokenizer needs ``vocab_size``; TikTokenizer reads it as Megatron-LM does."""
    from .megatron_tokenizers import NullTokenizer, TikTokenizer

    if tokenizer_type == "NullTokenizer":
        if not vocab_size:
            raise TokenizerError("NullTokenizer needs --vocab-size N (its ids are 0..N-1, N-1 ends a document)")
        return NullTokenizer({"null_tokenizer.json": json.dumps({"vocab_size": int(vocab_size)}).encode()})
    if tokenizer_type == "TikTokenizer":
        if not tokenizer_model:
            raise TokenizerError("TikTokenizer needs --tokenizer-model (a Megatron-LM tiktoken .json or a .tiktoken "
                                 "ranks file)")
        opts = {"pattern": tiktoken_pattern, "num_special_tokens": tiktoken_num_special_tokens,
                "vocab_size": vocab_size}
        return TikTokenizer({os.path.basename(tokenizer_model): _read(tokenizer_model),
                             "tiktoken_options.json": json.dumps(opts, sort_keys=True).encode()})
    one_file = {"HuggingFaceTokenizer": (HFTokenizer, "tokenizer.json", "a tokenizer.json or its directory"),
                "SentencePieceTokenizer": (SentencePieceTokenizer, "tokenizer.model", "a SentencePiece .model file")}
    if tokenizer_type in one_file:  # one model file, or the directory holding it under its usual name
        cls, name, what = one_file[tokenizer_type]
        if not tokenizer_model:
            raise TokenizerError(f"{tokenizer_type} needs --tokenizer-model ({what})")
        path = os.path.join(tokenizer_model, name) if os.path.isdir(tokenizer_model) else tokenizer_model
        return cls({name: _read(path)})
    if tokenizer_type == "GPT2BPETokenizer":
        if not (vocab_file and merge_file):
            raise TokenizerError("GPT2BPETokenizer needs --vocab-file (vocab.json) and --merge-file (merges.txt)")
        return GPT2BPETokenizer({"vocab.json": _read(vocab_file), "merges.txt": _read(merge_file)})
    raise TokenizerError(f"unknown --tokenizer-type {tokenizer_type!r}; choose one of {', '.join(TOKENIZER_TYPES)}")


def load_tokenizer(directory: str) -> Tokenizer:
    """Rebuild a tokenizer written by :meth:`Tokenizer.save`."""
    meta_path = os.path.join(directory, _META_FILE)
    meta = json.loads(_read(meta_path).decode("utf-8"))
    from .megatron_tokenizers import NullTokenizer, TikTokenizer

    files = {name: _read(os.path.join(directory, name)) for name in meta["files"]}
    cls = {"HuggingFaceTokenizer": HFTokenizer, "GPT2BPETokenizer": GPT2BPETokenizer,
           "SentencePieceTokenizer": SentencePieceTokenizer, "NullTokenizer": NullTokenizer,
           "TikTokenizer": TikTokenizer}.get(meta["tokenizer_type"])
    if cls is None:
        raise TokenizerError(f"{meta_path}: unknown tokenizer_type {meta['tokenizer_type']!r}")
    return cls(files)


# --- training ----------------------------------------------------------------------------------------------

def _iter_texts(files_or_texts) -> Iterable[str]:
    """Accept file paths (.py/.txt read whole; .jsonl* read via corpus.iter_jsonl) or raw strings."""
    if isinstance(files_or_texts, str):
        files_or_texts = [files_or_texts]
    for item in files_or_texts:
        if isinstance(item, os.PathLike) or (isinstance(item, str) and "\n" not in item and os.path.isfile(item)):
            path = os.fspath(item)
            if ".jsonl" in os.path.basename(path):
                from .corpus import iter_jsonl

                for doc in iter_jsonl(path, json_keys=("text",)):
                    yield doc["text"]
            else:
                with open(path, "r", encoding="utf-8", newline="") as f:
                    yield f.read()
        else:
            yield item


def _train_hf_bpe(texts: Iterable[str], vocab_size: int, output_dir: str) -> Tokenizer:
    from tokenizers import Regex
    from tokenizers import Tokenizer as _HF
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = _HF(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CODE_PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return _save_trained(tok, output_dir)


def transformers_special_tokens(tok: Tokenizer) -> dict:
    """eos/bos/unk/pad and additional special tokens as transformers' tokenizer_config.json and
    special_tokens_map.json name them: <|endoftext|> (our EOD) as eos/bos/unk, <pad> as pad when present."""
    eod = "<|endoftext|>"
    pad = "<pad>" if "<pad>" in tok.special_tokens else eod
    extra = [t for t in SPECIAL_TOKENS if t in tok.special_tokens and t not in (eod, pad)]
    return {"bos_token": eod, "eos_token": eod, "unk_token": eod, "pad_token": pad,
            "additional_special_tokens": extra}


def write_transformers_config(tok: Tokenizer, directory: str, **config) -> None:
    """tokenizer_config.json (the stock PreTrainedTokenizerFast class, our special tokens, `config`) and
    special_tokens_map.json beside a tokenizer.json, so `transformers.AutoTokenizer` and Megatron-LM's
    HuggingFaceTokenizer read the directory as ours. Megatron-LM takes the EOD it appends from ``eos_token``
    (core_v0.16.1 megatron/core/tokenizers/text/libraries/huggingface_tokenizer.py, ``eod``); without it its
    preprocess_data.py fails in its worker process on a None id."""
    specials = transformers_special_tokens(tok)
    full = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
            "add_bos_token": False, "add_eos_token": False, **config, **specials}
    atomic.write_text(os.path.join(directory, "tokenizer_config.json"), json.dumps(full, indent=2))
    atomic.write_text(os.path.join(directory, "special_tokens_map.json"), json.dumps(specials, indent=2))


def _save_trained(tok, output_dir: str) -> Tokenizer:
    """Write a `tokenizers` model trained here as OUTPUT_DIR/tokenizer.json (atomically) and load it back as ours;
    the transformers config files beside it make the directory a Hugging Face / Megatron-LM tokenizer too."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "tokenizer.json")
    tok.save(atomic.tmp_path(path))
    atomic.replace(atomic.tmp_path(path), path)
    result = HFTokenizer({"tokenizer.json": _read(path)})
    result.save(output_dir)
    write_transformers_config(result, output_dir)
    return result


# WordPiece's continuing-subword prefix: a character outside the byte-level alphabet, so no text token can
# contain it and the decoder can drop it exactly (BERT's "##" occurs in code: "## comment").
_WORDPIECE_PREFIX = "\u2042"


def _train_hf_wordpiece(texts: Iterable[str], vocab_size: int, output_dir: str) -> Tokenizer:
    """WordPiece (Schuster & Nakajima, 2012; BERT's tokenizer) for the democratization study's tokenizer ablation,
    through `tokenizers`, on the same byte-level pre-tokenization as our BPE, so the round trip is exact: after
    training, every byte symbol is added both word-initial and continuing (<= 512 extra entries), so no word ever
    falls back to the unknown token."""
    from tokenizers import Regex
    from tokenizers import Tokenizer as _HF
    from tokenizers import decoders, models, pre_tokenizers, trainers

    def finish(tok):
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(CODE_PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        tok.decoder = decoders.Sequence([decoders.Replace(_WORDPIECE_PREFIX, ""), decoders.ByteLevel()])
        return tok

    unk = "[UNK]"  # in the vocabulary as WordPiece requires; never produced (every byte symbol is covered)
    kw = dict(unk_token=unk, continuing_subword_prefix=_WORDPIECE_PREFIX, max_input_chars_per_word=1 << 30)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trained = finish(_HF(models.WordPiece(**kw)))
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS) + [unk],
                                        initial_alphabet=alphabet, continuing_subword_prefix=_WORDPIECE_PREFIX,
                                        show_progress=False)
    trained.train_from_iterator(texts, trainer=trainer)
    vocab = trained.get_vocab()
    for symbol in sorted(alphabet):
        for piece in (symbol, _WORDPIECE_PREFIX + symbol):
            vocab.setdefault(piece, len(vocab))
    tok = finish(_HF(models.WordPiece(vocab=vocab, **kw)))
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return _save_trained(tok, output_dir)


def _train_sentencepiece(texts: Iterable[str], vocab_size: int, output_dir: str, model_type: str) -> Tokenizer:
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    # Exact round trip needs: identity normalization, no whitespace collapsing, no dummy prefix, byte fallback
    # for unseen characters, whitespace-only pieces for indentation. Specials are control symbols so they are
    # never matched inside text. Digits are split like the BPE tokenizer.
    try:
        _spm_train(spm, texts, model, vocab_size, model_type)
    except RuntimeError as exc:  # e.g. vocabulary smaller than the required characters + 256 byte pieces
        raise TokenizerError(f"SentencePiece training failed: {str(exc).splitlines()[-1]}") from None
    data = model.getvalue()
    if model_type == "unigram":
        data = quantize_unigram_scores(data)
    result = SentencePieceTokenizer({"tokenizer.model": data})
    result.save(output_dir)
    return result


# SentencePiece's unigram Viterbi (unigram_model.cc, Model::EncodeOptimized) keeps path scores in float32,
# `tokenizers`' Unigram (models/unigram/model.rs, encode_optimized) runs the same algorithm in float64; both keep
# the first of equal candidates (strict >, pieces tried by start position, then by length). On near-ties the two
# roundings pick different paths (62 of 1,786 stdlib files, 1,200 pieces). With every piece score a multiple of
# UNIGRAM_SCORE_STEP, every path score is a multiple of it too, and exact in float32 while its magnitude stays below
# 2**24 * step (float32's 24-bit significand): both libraries then compute the same sums, the same ties, the same
# path. The step 1/8 (a 13% step in piece probability) is the finest whose bound, 2**21, covers the largest file
# of the Python standard library (a 757 KB file whose best path scores -1.67e6 with a 1,200-piece model).
UNIGRAM_SCORE_STEP = 2.0 ** -3


def quantize_unigram_scores(model_bytes: bytes, step: float = UNIGRAM_SCORE_STEP) -> bytes:
    """A serialized SentencePiece unigram model with every normal piece's score rounded to a multiple of `step`
    (see UNIGRAM_SCORE_STEP for why)."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_bytes)
    for piece in proto.pieces:
        if piece.type == sentencepiece_model_pb2.ModelProto.SentencePiece.NORMAL:
            piece.score = round(piece.score / step) * step
    return proto.SerializeToString()


def _spm_train(spm, texts, model, vocab_size, model_type):
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type=model_type,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
        byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True, split_by_whitespace=True,
        max_sentence_length=1 << 20, character_coverage=1.0, hard_vocab_limit=False,
        control_symbols=[t for t in SPECIAL_TOKENS if t != "<pad>"], unk_id=0, bos_id=-1, eos_id=-1,
        pad_id=1, pad_piece="<pad>", minloglevel=2)


def train_code_tokenizer(files_or_texts, vocab_size: int, output_dir: str, kind: str = "bpe") -> Tokenizer:
    """Train a tokenizer for source code and save it to ``output_dir``.

    ``kind``: ``"bpe"`` (HF byte-level BPE; exact round trip for any text), ``"wordpiece"`` (byte-level WordPiece,
    exact round trip; the study's tokenizer ablation) or ``"sentencepiece-bpe"`` /
    ``"sentencepiece-unigram"`` (byte fallback; round trip exact except for the U+2581 character SentencePiece
    reserves for spaces). SPECIAL_TOKENS get the ids 0..7 (BPE) so every tokenizer we train agrees on them.
    """
    if vocab_size < 300 and kind == "bpe":
        raise TokenizerError(f"--vocab-size {vocab_size} is too small: byte-level BPE needs 256 byte tokens + "
                             f"{len(SPECIAL_TOKENS)} specials; use at least 300")
    texts = _iter_texts(files_or_texts)
    if kind == "bpe":
        return _train_hf_bpe(texts, vocab_size, output_dir)
    if kind == "wordpiece":
        return _train_hf_wordpiece(texts, vocab_size, output_dir)
    if kind in ("sentencepiece-bpe", "sentencepiece-unigram", "unigram"):
        model_type = "bpe" if kind == "sentencepiece-bpe" else "unigram"
        return _train_sentencepiece(texts, vocab_size, output_dir, model_type)
    raise TokenizerError(f"unknown tokenizer kind {kind!r}; choose bpe, wordpiece, sentencepiece-bpe or "
                         f"sentencepiece-unigram")
