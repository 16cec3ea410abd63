"""Exact fast encoder for our code BPE tokenizer (the one ``train_code_tokenizer(kind="bpe")`` writes).

The C++ extension ``_bpe_cpp`` (csrc/bpe.cpp) pre-tokenizes ASCII text by CODE_PRETOKENIZE_REGEX (written out by
hand) and applies the BPE merges with the semantics of Hugging Face ``tokenizers`` (lowest merge rank first,
leftmost on ties), with a word cache. Anything it does not cover goes to the ``tokenizers`` encoder unchanged:

- an ASCII text: C++ only;
- a non-ASCII text whose only whitespace is space, tab and newline: cut after newline runs around each line that
  holds a non-ASCII character (exact: no pre-token spans the end of a newline run in such text, see
  ``tokenizer._line_local``); ASCII stretches go to C++, the non-ASCII lines to ``tokenizers``;
- any other text: ``tokenizers``.

So the ids equal ``tokenizers``' ids by construction (tests/unit/test_fast_bpe.py fuzzes that claim). Special-token
strings inside the text are plain text on both paths (the wrapper sets ``encode_special_tokens``).
``MEGATRON_CODE_FAST_BPE=0`` turns the fast path off (for debugging and for the benchmark's comparison run).
"""

from __future__ import annotations

import itertools
import os
import re
from typing import Sequence

_NON_ASCII = re.compile(r"[^\x00-\x7f]")
# Whitespace other than space/tab/newline (a superset of Oniguruma's \s): texts holding any are never cut into lines
# (also used by tokenizer._line_pieces).
UNSAFE_WHITESPACE = re.compile(r"[^\S \t\n]")
_NEWLINE_RUN = re.compile(r"\n*")
ENV_SWITCH = "MEGATRON_CODE_FAST_BPE"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet (what the ByteLevel pre-tokenizer maps each byte to): printable Latin-1
    bytes map to themselves, the other 68 to U+0100.. in byte order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    mapping, extra = {}, 0
    for b in range(256):
        if b in keep:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def supported_model(tokenizer_json: dict) -> bool:
    """True when the BPE model and post-processing have no option the C++ encoder ignores (the pre-tokenizer
    and added tokens are checked by ``tokenizer._line_local``)."""
    model = tokenizer_json.get("model") or {}
    return (model.get("type") == "BPE" and model.get("dropout") in (None, 0.0)
            and not model.get("continuing_subword_prefix") and not model.get("end_of_word_suffix")
            and not model.get("ignore_merges") and tokenizer_json.get("post_processor") is None)


def load_extension():
    """The compiled encoder module, or None (not built, or disabled by MEGATRON_CODE_FAST_BPE=0)."""
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        from . import _bpe_cpp
    except ImportError:
        return None
    return _bpe_cpp


class FastBPE:
    """``encode_batch(texts)`` equal to ``[hf.encode(t, add_special_tokens=False).ids for t in texts]``.

    ``tokenizer_json``: the parsed tokenizer.json (a code BPE: ``_line_local`` and :func:`supported_model`
    hold); ``hf``: the ``tokenizers.Tokenizer`` for the fallback (``encode_special_tokens`` already set)."""

    def __init__(self, tokenizer_json: dict, hf, ext, long_word: int = 128):
        model = tokenizer_json["model"]
        vocab = model["vocab"]
        alphabet = _bytes_to_unicode()
        missing = [b for b in range(256) if alphabet[b] not in vocab]
        if missing:
            raise ValueError(f"byte tokens missing from the vocabulary: {missing[:8]}")
        byte_ids = [vocab[alphabet[b]] for b in range(256)]
        merges = []
        for m in model["merges"]:
            a, b = m.split(" ") if isinstance(m, str) else m
            merges.append((vocab[a], vocab[b], vocab[a + b]))
        self._cpp = ext.Encoder(byte_ids, merges, long_word=long_word)
        self._hf = hf

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        out: list = [None] * len(texts)
        segmented = {}  # doc index -> per-segment id lists (None until `tokenizers` fills it)
        slow, owner = [], []  # segments for `tokenizers` and their (doc index, segment index)
        for i, text in enumerate(texts):
            ids = self._cpp.encode(text)  # None unless ASCII
            if ids is not None:
                out[i] = ids
                continue
            parts = []
            for is_ascii, seg in self._segments(text):
                if is_ascii:
                    parts.append(self._cpp.encode(seg))
                else:
                    slow.append(seg)
                    owner.append((i, len(parts)))
                    parts.append(None)
            segmented[i] = parts
        if slow:
            for (i, k), enc in zip(owner, self._hf.encode_batch_fast(slow, add_special_tokens=False)):
                segmented[i][k] = enc.ids
        for i, parts in segmented.items():
            out[i] = list(itertools.chain.from_iterable(parts))
        return out

    @staticmethod
    def _segments(text: str) -> list:
        """[(is_ascii, text)] whose concatenation is ``text``, cut only after newline runs (see module doc)."""
        if UNSAFE_WHITESPACE.search(text):
            return [(False, text)]
        segments, pos, n = [], 0, len(text)
        while pos < n:
            m = _NON_ASCII.search(text, pos)
            if m is None:
                break
            # The line holding the character, from its start (just after a newline run, or ``pos``, which is a
            # line start) through the newline run that ends it.
            start = max(text.rfind("\n", pos, m.start()) + 1, pos)
            end = text.find("\n", m.end())
            end = n if end < 0 else _NEWLINE_RUN.match(text, end).end()
            if start > pos:
                segments.append((True, text[pos:start]))
            if segments and not segments[-1][0]:
                segments[-1] = (False, segments[-1][1] + text[start:end])
            else:
                segments.append((False, text[start:end]))
            pos = end
        if pos < n:
            segments.append((True, text[pos:]))
        return segments
