"""Megatron's NullTokenizer and TikTokenizer behind our Tokenizer interface (data/tokenizer.py builds them)."""

from __future__ import annotations

import json
import os

from .tokenizer import EOD_ALIASES, SPECIAL_TOKENS, Tokenizer, TokenizerError


class NullTokenizer(Tokenizer):
    """Megatron-LM's NullTokenizer (megatron/core/tokenizers/text/libraries/null_tokenizer.py): text is
    space-separated token ids, ``vocab_size`` comes from --vocab-size and the end-of-document id is
    ``vocab_size - 1``. For benchmarks and mock data (Megatron-DeepSpeed's variant adds one id for EOD instead)."""

    tokenizer_type = "NullTokenizer"

    def __init__(self, files: dict[str, bytes]):
        self._size = int(json.loads(files["null_tokenizer.json"])["vocab_size"])
        if self._size < 1:
            raise TokenizerError("NullTokenizer needs --vocab-size N (N >= 1)")
        super().__init__(files)
        self.eod = self.pad = self._size - 1

    def _vocab_size(self):
        return self._size

    def _token_to_id(self, token):
        return self._size - 1 if token in EOD_ALIASES + ("<|endoftext|>",) else None

    def _encode(self, text):
        return [int(x) for x in text.split(" ")] if text else []

    def _decode_plain(self, ids):
        return " ".join(str(i) for i in ids)


class TikTokenizer(Tokenizer):
    """A tiktoken BPE (``tiktoken`` does the encoding). Two rank files:

    - Megatron-LM's TikTokenizer JSON (a list of ``{"rank", "token_bytes" (base64), "token_str"}``): ids exactly as
      Megatron-LM gives them: ``num_special_tokens`` (1000) special ids first (``<unk> <s> </s> <mask> <pad> <cls>
      <sep>`` then ``<SPECIAL_7>``...), then rank r at id ``r + num_special_tokens``, the ranks cut at
      ``vocab_size - num_special_tokens`` (vocab_size 2^17 unless --vocab-size); end of document ``</s>``.
    - a plain ``.tiktoken`` file (``base64 rank`` per line, e.g. cl100k_base), whose ranks fill the base vocabulary:
      our special tokens (SPECIAL_TOKENS: ``<|endoftext|>``, FIM sentinels, ...) get the ids after the last rank,
      i.e. rows of the embedding that padding to --make-vocab-size-divisible-by adds anyway.

    Special-token strings inside the text are encoded as text (our contract; Megatron-LM allows them)."""

    tokenizer_type = "TikTokenizer"
    MEGATRON_SPECIALS = ["<unk>", "<s>", "</s>", "<mask>", "<pad>", "<cls>", "<sep>"]
    # Megatron-LM's "v2" split pattern (megatron/core/tokenizers/text/libraries/tiktoken_tokenizer.py).
    PATTERN_V2 = ("[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+|"
                  "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*|\\p{N}|"
                  " ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
    PATTERN_V1 = r"[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"

    def __init__(self, files: dict[str, bytes]):
        import base64

        try:
            import tiktoken
        except ImportError:
            raise TokenizerError("TikTokenizer needs the tiktoken package: pip install 'megatron_code[tiktoken]'") \
                from None
        opts = json.loads(files["tiktoken_options.json"])
        name = [n for n in files if n != "tiktoken_options.json"][0]
        data = files[name]
        try:
            if name.endswith(".json"):  # Megatron-LM's layout
                n_special = int(opts.get("num_special_tokens") or 1000)
                vocab_size = int(opts.get("vocab_size") or 2 ** 17)
                if not len(self.MEGATRON_SPECIALS) <= n_special < vocab_size:
                    raise TokenizerError(f"TikTokenizer: --tiktoken-num-special-tokens {n_special} must be >= "
                                         f"{len(self.MEGATRON_SPECIALS)} and below the vocabulary size {vocab_size}")
                entries = json.loads(data)[:vocab_size - n_special]
                ranks = {}
                for i, e in enumerate(entries):
                    if e["rank"] != i:
                        raise TokenizerError(f"{name}: entry {i} has rank {e['rank']} (ranks must be 0, 1, 2, ...)")
                    ranks[base64.b64decode(e["token_bytes"])] = i + n_special
                specials = self.MEGATRON_SPECIALS + [f"<SPECIAL_{i}>" for i in range(len(self.MEGATRON_SPECIALS),
                                                                                        n_special)]
                special_ids = {t: i for i, t in enumerate(specials)}
            else:  # a .tiktoken ranks file: the base vocabulary is full, specials go after it
                ranks = {}
                for line in data.splitlines():
                    if line.strip():
                        token, rank = line.split()
                        ranks[base64.b64decode(token)] = int(rank)
                first = max(ranks.values()) + 1
                special_ids = {t: first + i for i, t in enumerate(SPECIAL_TOKENS)}
        except (ValueError, KeyError, TypeError) as exc:
            raise TokenizerError(f"could not read the tiktoken ranks file {name}: {exc}") from None
        pattern = {"v1": self.PATTERN_V1, "v2": self.PATTERN_V2}.get(opts.get("pattern") or "v2")
        if pattern is None:
            raise TokenizerError(f"--tiktoken-pattern must be v1 or v2, got {opts.get('pattern')!r}")
        self._special_ids = special_ids
        self._enc = tiktoken.Encoding(name=os.path.splitext(name)[0], pat_str=pattern, mergeable_ranks=ranks,
                                      special_tokens=special_ids)
        self._ranks = ranks
        super().__init__(files)

    def _vocab_size(self):
        return max(max(self._ranks.values()), max(self._special_ids.values())) + 1

    def _token_to_id(self, token):
        if token in self._special_ids:
            return self._special_ids[token]
        return self._ranks.get(token.encode("utf-8"))

    def _encode(self, text):
        return self._enc.encode(text, allowed_special=set(), disallowed_special=())

    def _encode_batch(self, texts):
        return self._enc.encode_batch(list(texts), allowed_special=set(), disallowed_special=())

    def _decode_plain(self, ids):
        return self._enc.decode(ids)
