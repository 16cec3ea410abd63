"""When a completion ends: end-of-document token, stop strings (checked on decoded text, incrementally), or the
token budget. One :class:`CompletionTracker` keeps the generated ids of every row of a generation call.

Stop strings are matched on text, not tokens, because a stop such as HumanEval's "\\ndef" is usually not a token
boundary ("\\n" may merge with preceding whitespace, "def" with a following space). The returned completion text is
cut before the earliest stop string; the returned ids end with the token that completed the stop.
"""

from __future__ import annotations

from typing import Callable, Sequence

from .sampling import GenerationError

HUMANEVAL_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")

# Prompt tokens decoded together with the completion, so tokenizers whose decoding depends on the left context
# (SentencePiece word-start markers, byte-level pieces split across tokens) render the completion as it would
# appear after the prompt.
_PROMPT_CONTEXT_TOKENS = 8
# Stop detection decodes only the newest tokens: a window of this many tokens per character of the longest stop
# (a token may carry as little as one byte of a 4-byte character), plus slack. Decoding the whole completion every
# step would cost O(length^2) per row.
_WINDOW_TOKENS_PER_CHAR = 4
_WINDOW_SLACK = 16


def decode_completion(decode: Callable[[list[int]], str], prompt_ids: Sequence[int], ids: Sequence[int]) -> str:
    """Text of ``ids`` as it reads after ``prompt_ids``."""
    ctx = list(prompt_ids[-_PROMPT_CONTEXT_TOKENS:])
    if ctx:
        head = decode(ctx)
        full = decode(ctx + list(ids))
        if full.startswith(head):
            return full[len(head):]
    return decode(list(ids))


def find_stop(text: str, stops: Sequence[str], start: int = 0) -> int:
    """Index of the earliest occurrence of any stop string at or after ``start``; -1 if none."""
    best = -1
    for s in stops:
        i = text.find(s, start)
        if i >= 0 and (best < 0 or i < best):
            best = i
    return best


def truncate_at_stop(text: str, stops: Sequence[str] | None) -> str:
    """``text`` cut before its earliest stop string (unchanged when none occurs)."""
    i = find_stop(text, stops or ())
    return text if i < 0 else text[:i]


class CompletionTracker:
    """Generated ids of ``n`` rows and whether each is finished.

    ``add(row, token)`` records one new token for a row and returns True when the row is now finished:
    the token is ``eod_id`` (not recorded), a stop string appeared in the decoded completion (needs ``decode``),
    or the row holds ``max_new_tokens`` tokens.
    """

    def __init__(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, eod_id: int | None = None,
                 stop: Sequence[str] | None = None, decode: Callable[[list[int]], str] | None = None):
        stops = [s for s in (stop or []) if s]
        if stops and decode is None:
            raise GenerationError("stop strings need a tokenizer to decode text: pass tokenizer=... (or use "
                                  "generate(), which has one)")
        self.prompts = [list(p) for p in prompts]
        self.max_new_tokens = max_new_tokens
        self.eod_id = eod_id
        self.stops = stops
        self.decode = decode
        self.ids: list[list[int]] = [[] for _ in self.prompts]
        self.done = [max_new_tokens <= 0] * len(self.prompts)
        self.stopped_by: list[str | None] = [None] * len(self.prompts)
        self._window = _WINDOW_TOKENS_PER_CHAR * max((len(s) for s in stops), default=0) + _WINDOW_SLACK

    def add(self, row: int, token: int) -> bool:
        if self.done[row]:
            raise RuntimeError(f"row {row} is already finished")
        if self.eod_id is not None and token == self.eod_id:
            return self._finish(row, "eod")
        self.ids[row].append(int(token))
        if self.stops and self._stop_in_tail(row):
            return self._finish(row, "stop")
        if len(self.ids[row]) >= self.max_new_tokens:
            return self._finish(row, "length")
        return False

    def _stop_in_tail(self, row: int) -> bool:
        """Does a stop string occur in the text of the newest tokens? Any earlier occurrence was caught at an
        earlier step, so the tail (rendered after its left context) is all that needs checking."""
        ids = self.ids[row]
        if len(ids) <= self._window:
            return find_stop(decode_completion(self.decode, self.prompts[row], ids), self.stops) >= 0
        left = (self.prompts[row][-_PROMPT_CONTEXT_TOKENS:] + ids[:-self._window])[-_PROMPT_CONTEXT_TOKENS:]
        return find_stop(decode_completion(self.decode, left, ids[-self._window:]), self.stops) >= 0

    def _finish(self, row: int, reason: str) -> bool:
        self.done[row] = True
        self.stopped_by[row] = reason
        return True

    def text(self, row: int) -> str:
        """Completion text of a row (needs ``decode``), cut before the earliest stop string."""
        if self.decode is None:
            raise RuntimeError("CompletionTracker.text needs decode")
        return truncate_at_stop(decode_completion(self.decode, self.prompts[row], self.ids[row]), self.stops)


__all__ = ["HUMANEVAL_STOPS", "CompletionTracker", "decode_completion", "find_stop", "truncate_at_stop"]
