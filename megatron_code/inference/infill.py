"""Infilling: given a prefix and a suffix, write the middle. FIM prompts (PSM, SPM) for FIM-trained models and
Meet-in-the-Middle decoding (Nguyen et al., 2023) for MIM-trained models; plus plain MIM left-to-right generation.

FIM (Bavarian et al., 2022; the layouts of data/objectives/fim.py). The prompt is

    PSM  <fim_prefix> prefix <fim_suffix> suffix <fim_middle>            -> the model writes  middle <EOD>
    SPM  <fim_prefix> <fim_suffix> suffix <fim_middle> prefix            -> the model writes  middle <EOD>

and generation stops at EOD (the end of the document, i.e. of the middle) or at any other special token; the
middle is what came before it.

MIM. The same decoder reads left-to-right after ``<l2r>`` and right-to-left after ``<r2l>`` (data/objectives/mim.py).
The forward row ``<l2r> prefix`` extends the prefix, the backward row ``<r2l> reversed(suffix)`` extends the suffix
towards the left; both rows of a problem (and of every problem in the group) run in one model call per step with
a KV cache. In forward (reading) order write

    left  = prefix + F            F: forward tokens so far
    right = reversed(B) + suffix  B: backward tokens so far (reversed(B) is their reading order)

After each step the newest n-gram of each side is looked up in the other side's sequence: the forward frontier
``left[-n:]`` in ``right`` (nearest the backward frontier first), the backward frontier ``right[:n]`` in ``left``
(nearest the forward frontier first). The context is part of the searched sequence, so a short middle is found too
(the forward side writing the start of the suffix means it has crossed the gap). A match ``left[a:a+n] ==
right[b:b+n]`` aligns the two sides; the stitch is ``left[:a'] + right[b':]`` with the join ``a' = max(a, len(prefix))``
inside the overlap (``b' = a' - a + b``); it is only taken when the prefix and suffix survive whole. Then the
stitch is *checked by the other direction*: both directions score the stitched text teacher-forced, the backward
direction must predict the forward side's ``verify_window`` tokens left of the join and the forward direction the
backward side's tokens right of it (greedy argmax agreement >= ``min_agreement``). A rejected candidate is
forgotten and decoding goes on. ``max_new_tokens`` steps per direction bound the work; when they run out (or the
forward side ends with EOD) the forward output alone is stitched to the suffix and the result says so
(``status`` "budget" / "forward_end" instead of "met").

Token ids: the prefix is tokenized alone and the suffix alone (as FIM training tokenizes its three pieces), so
spans that start and end at line boundaries tokenize as they did in training. Long contexts are cut to the last
``max_prefix_tokens`` / first ``max_suffix_tokens`` tokens (a model trained on short samples never saw more).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..model.gpt import GPT
from .generate import (_model_device, attention_mask, check_length, check_prompts, eval_mode, generate_ids,
                       left_pad, real_vocab_size)
from .sampling import GenerationError, SamplingParams, choose_next, row_generator

__all__ = ["InfillError", "InfillIds", "InfillResult", "infill_ids", "fim_prompt", "fim_infill_ids", "fim_infill",
           "mim_infill_ids", "mim_infill", "mim_generate", "find_meeting", "MODES", "infill"]

MODES = ("fim-psm", "fim-spm", "mim")


class InfillError(GenerationError):
    """A user-fixable infilling problem (tokenizer without the sentinels, bad n, bad mode)."""


@dataclass(frozen=True)
class InfillIds:
    """The special ids infilling needs (None where the tokenizer lacks them)."""

    eod: int
    fim_prefix: int | None = None
    fim_middle: int | None = None
    fim_suffix: int | None = None
    l2r: int | None = None
    r2l: int | None = None
    specials: frozenset = frozenset()

    def need(self, *names: str) -> None:
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise InfillError(f"the tokenizer lacks the sentinel(s) {missing}: infill with a model trained with "
                              f"the matching objective and a tokenizer from tools/train_tokenizer.py")


def infill_ids(tokenizer) -> InfillIds:
    """Resolve sentinel ids from a tokenizer (``special_tokens`` dict + ``eod``)."""
    sp = dict(getattr(tokenizer, "special_tokens", {}) or {})
    return InfillIds(eod=int(tokenizer.eod), fim_prefix=sp.get("<fim_prefix>"), fim_middle=sp.get("<fim_middle>"),
                     fim_suffix=sp.get("<fim_suffix>"), l2r=sp.get("<l2r>"), r2l=sp.get("<r2l>"),
                     specials=frozenset(int(v) for v in sp.values()) | {int(tokenizer.eod)})


@dataclass
class InfillResult:
    """One infilled middle: ``ids`` / ``text``; ``status`` says how it ended ("eod", "sentinel", "budget" for FIM;
    "met", "budget", "forward_end" for MIM); ``steps`` decoding steps; MIM also records ``forward``/``backward``
    (the tokens each direction wrote, backward in generation order), ``candidates`` (meetings checked) and
    ``agreement`` (of the accepted stitch)."""

    ids: list[int]
    text: str = ""
    status: str = ""
    steps: int = 0
    forward: list[int] = field(default_factory=list)
    backward: list[int] = field(default_factory=list)
    candidates: int = 0
    agreement: float | None = None


def _cut_contexts(prefix_ids, suffix_ids, max_prefix_tokens, max_suffix_tokens):
    p, s = list(prefix_ids), list(suffix_ids)
    if max_prefix_tokens is not None and len(p) > max_prefix_tokens:
        p = p[len(p) - max_prefix_tokens:]
    if max_suffix_tokens is not None and len(s) > max_suffix_tokens:
        s = s[:max_suffix_tokens]
    return p, s


# ---------------------------------------------------------------------------------------------- FIM
def fim_prompt(ids: InfillIds, prefix_ids: Sequence[int], suffix_ids: Sequence[int], spm: bool = False) -> list[int]:
    """The PSM or SPM prompt (module docstring); the model's continuation is the middle."""
    ids.need("fim_prefix", "fim_middle", "fim_suffix")
    if spm:
        return [ids.fim_prefix, ids.fim_suffix, *suffix_ids, ids.fim_middle, *prefix_ids]
    return [ids.fim_prefix, *prefix_ids, ids.fim_suffix, *suffix_ids, ids.fim_middle]


def fim_infill_ids(model: GPT, ids: InfillIds, prefixes: Sequence[Sequence[int]], suffixes: Sequence[Sequence[int]],
                   *, spm: bool = False, max_new_tokens: int = 64, temperature: float = 0.0, top_k: int = 0,
                   top_p: float = 1.0, seed: int = 0, batch_size: int = 16, vocab_size: int | None = None,
                   tokenizer=None) -> list[InfillResult]:
    """FIM-infill each (prefix, suffix) pair of token ids; the middle ends before EOD or any other special id.

    With ``tokenizer`` the special-token strings are also stop strings, so a row stops as soon as it writes one
    (without it a row that writes a sentinel other than EOD runs to ``max_new_tokens``; the cut is the same)."""
    if len(prefixes) != len(suffixes):
        raise InfillError(f"{len(prefixes)} prefixes but {len(suffixes)} suffixes")
    prompts = [fim_prompt(ids, p, s, spm) for p, s in zip(prefixes, suffixes)]
    stop = None
    if tokenizer is not None:
        stop = [name for name, i in tokenizer.special_tokens.items() if i != ids.eod]
    outs = generate_ids(model, prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                        top_p=top_p, stop=stop, seed=seed, batch_size=batch_size, eod_id=ids.eod,
                        vocab_size=vocab_size, tokenizer=tokenizer)
    results = []
    for out in outs:
        cut = next((k for k, t in enumerate(out) if t in ids.specials), None)
        if cut is not None:
            results.append(InfillResult(ids=list(out[:cut]), status="sentinel", steps=len(out)))
        elif len(out) < max_new_tokens:
            results.append(InfillResult(ids=list(out), status="eod", steps=len(out) + 1))
        else:
            results.append(InfillResult(ids=list(out), status="budget", steps=len(out)))
    return results


def fim_infill(model: GPT, tokenizer, prefixes: Sequence[str], suffixes: Sequence[str], *, spm: bool = False,
               max_prefix_tokens: int | None = None, max_suffix_tokens: int | None = None,
               **kwargs) -> list[InfillResult]:
    """Text-level FIM infilling (see ``fim_infill_ids`` for the generation keywords)."""
    pairs = [_cut_contexts(tokenizer.encode(p), tokenizer.encode(s), max_prefix_tokens, max_suffix_tokens)
             for p, s in zip(prefixes, suffixes)]
    results = fim_infill_ids(model, infill_ids(tokenizer), [p for p, _ in pairs], [s for _, s in pairs], spm=spm,
                             vocab_size=real_vocab_size(model, tokenizer), tokenizer=tokenizer, **kwargs)
    for r in results:
        r.text = tokenizer.decode(r.ids)
    return results


# ---------------------------------------------------------------------------------------------- MIM: meeting
def _find(needle: list[int], hay: list[int], order) -> list[int]:
    n = len(needle)
    return [i for i in order(range(len(hay) - n + 1)) if hay[i:i + n] == needle]


def find_meeting(left: list[int], right: list[int], n: int, prefix_len: int, suffix_len: int,
                 side: str) -> list[tuple[int, int]]:
    """Stitch candidates ``(a', b')`` (final = ``left[:a'] + right[b':]``) for the newest n-gram of ``side``
    ("fwd": ``left[-n:]`` searched in ``right``; "bwd": ``right[:n]`` searched in ``left``), nearest the other
    side's frontier first. Only stitches that keep the prefix (``a' >= prefix_len``) and the suffix
    (``b' <= len(right) - suffix_len``) whole, with the join inside the overlap, are returned."""
    if len(left) < n or len(right) < n:
        return []
    r_end = len(right) - suffix_len  # right[:r_end] is what the backward side wrote
    if side == "fwd":
        a = len(left) - n
        matches = [(a, b) for b in _find(left[a:], right, iter)]
    else:
        matches = [(a, 0) for a in _find(right[:n], left, reversed)]
    out = []
    for a, b in matches:
        join = max(a, prefix_len)
        if join > a + n:  # the overlap lies wholly inside the prefix, before the gap
            continue
        bj = join - a + b
        if bj <= r_end:
            out.append((join, bj))
    return out


@dataclass
class _Problem:
    prefix: list[int]
    suffix: list[int]
    fwd: list[int] = field(default_factory=list)
    bwd: list[int] = field(default_factory=list)
    fwd_done: bool = False
    bwd_done: bool = False
    result: InfillResult | None = None
    candidates: int = 0
    tried: set = field(default_factory=set)

    @property
    def left(self) -> list[int]:
        return self.prefix + self.fwd

    @property
    def right(self) -> list[int]:
        return self.bwd[::-1] + self.suffix


def _verify(model: GPT, ids: InfillIds, stitched: list[int], join: int, lo: int, hi: int,
            window: int) -> float:
    """Fraction of checked tokens the other direction predicts (greedy) in the stitched sequence.

    ``stitched[lo:hi]`` is the middle; the forward side wrote ``stitched[lo:join]`` (checked by the backward
    direction, the ``window`` tokens nearest the join) and the backward side ``stitched[join:hi]`` (checked by
    the forward direction). An empty check (nothing written on either side of the join) counts as 1.0."""
    f_lo, f_hi = join, min(hi, join + window)  # forward direction checks these positions
    b_lo, b_hi = max(lo, join - window), join  # backward direction checks these
    if f_hi <= f_lo and b_hi <= b_lo:
        return 1.0
    L = len(stitched)
    fwd_row = [ids.l2r] + stitched[:max(f_hi, 1)]  # input index x predicts stitched[x]
    rev = stitched[::-1]
    bwd_row = [ids.r2l] + rev[:max(L - b_lo, 1)]  # input index y predicts rev[y] = stitched[L - 1 - y]
    batch = left_pad([fwd_row, bwd_row], 0, _model_device(model))
    mask = attention_mask(batch.valid, batch.tokens.shape[1]) if batch.padded else None
    logits = model(batch.tokens, position_ids=batch.positions, mask=mask)  # (2, P, V)
    pad = [batch.prompt_len - len(fwd_row), batch.prompt_len - len(bwd_row)]
    agree, total = 0, 0
    for x in range(f_lo, f_hi):
        agree += int(logits[0, pad[0] + x].argmax()) == stitched[x]
        total += 1
    for x in range(b_lo, b_hi):
        y = L - 1 - x
        agree += int(logits[1, pad[1] + y].argmax()) == stitched[x]
        total += 1
    return agree / total


def _try_meet(model, ids, prob: _Problem, n: int, window: int, min_agreement: float, verify: bool) -> bool:
    left, right = prob.left, prob.right
    sides = [s for s, new in (("fwd", prob.fwd and not prob.fwd_done), ("bwd", prob.bwd and not prob.bwd_done))
             if new]
    for side in sides:
        for join, bj in find_meeting(left, right, n, len(prob.prefix), len(prob.suffix), side)[:1]:
            stitched = left[:join] + right[bj:]
            lo, hi = len(prob.prefix), len(stitched) - len(prob.suffix)
            key = (join, bj, len(left), len(right))
            if key in prob.tried:
                continue
            prob.tried.add(key)
            prob.candidates += 1
            score = _verify(model, ids, stitched, join, lo, hi, window) if verify else 1.0
            if score >= min_agreement:
                prob.result = InfillResult(ids=stitched[lo:hi], status="met", agreement=score)
                return True
    return False


# ---------------------------------------------------------------------------------------------- MIM: decoding
def _mim_group(model: GPT, ids: InfillIds, probs: list[_Problem], params: SamplingParams, n: int, budget: int,
               window: int, min_agreement: float, verify: bool, vocab_size, seed: int, first: int) -> None:
    K = len(probs)
    prompts = [[ids.l2r] + p.prefix for p in probs] + [[ids.r2l] + p.suffix[::-1] for p in probs]
    check_prompts(model, prompts)
    batch = left_pad(prompts, budget, _model_device(model))
    check_length(model, batch.prompt_len, budget)
    cache = model.new_cache(2 * K, batch.tokens.shape[1])
    rows = list(range(2 * K))  # original row of each batch row: k forward, K + k backward of problem k
    gens = None if params.greedy else [row_generator(seed, first + (r % K), r // K) for r in rows]
    cur, start, step = batch.prompt_len, 0, 0
    while rows:
        mask = attention_mask(batch.valid[:, :cur], cur - start) if batch.padded else None
        logits = model(batch.tokens[:, start:cur], position_ids=batch.positions[:, start:cur], cache=cache,
                       mask=mask)  # (rows, cur - start, V)
        nxt = choose_next(logits[:, -1], params, vocab_size, gens)  # (rows,)
        batch.tokens[:, cur] = nxt
        start, cur, step = cur, cur + 1, step + 1
        for r, t in zip(rows, nxt.tolist()):
            p, fwd = probs[r % K], r < K
            if (p.fwd_done if fwd else p.bwd_done):
                continue
            if t in ids.specials:  # EOD (or a stray sentinel): this side has reached the end of the text
                if fwd:
                    p.fwd_done = True
                else:
                    p.bwd_done = True
            else:
                (p.fwd if fwd else p.bwd).append(t)
        for p in probs:
            if p.result is not None:
                continue
            if not _try_meet(model, ids, p, n, window, min_agreement, verify):
                if p.fwd_done or step >= budget:
                    p.result = InfillResult(ids=list(p.fwd), status="forward_end" if p.fwd_done else "budget")
            if p.result is not None:
                p.result.steps, p.result.candidates = step, p.candidates
                p.result.forward, p.result.backward = list(p.fwd), list(p.bwd)
        keep = [i for i, r in enumerate(rows) if probs[r % K].result is None]
        if len(keep) < len(rows):
            if not keep:
                break
            index = torch.tensor(keep, dtype=torch.long, device=batch.tokens.device)
            batch.select(index)
            cache.reorder(index)
            rows = [rows[i] for i in keep]
            gens = [gens[i] for i in keep] if gens is not None else None


def mim_infill_ids(model: GPT, ids: InfillIds, prefixes: Sequence[Sequence[int]], suffixes: Sequence[Sequence[int]],
                   *, n: int = 3, max_new_tokens: int = 64, verify_window: int | None = None,
                   min_agreement: float = 1.0, verify: bool = True, temperature: float = 0.0, top_k: int = 0,
                   top_p: float = 1.0, seed: int = 0, batch_size: int = 8,
                   vocab_size: int | None = None) -> list[InfillResult]:
    """Meet-in-the-middle infilling of each (prefix, suffix) pair of ids (module docstring).

    ``n``: n-gram length of a meeting; ``max_new_tokens``: decoding steps per direction (each step writes one
    token on each side); ``verify_window`` (default ``n``) tokens on each side of the join are checked by the
    other direction and at least ``min_agreement`` of them must be its greedy choice (``verify=False`` takes the
    first meeting). ``batch_size`` problems (2 rows each) decode together. Sampling rows draw from
    ``row_generator(seed, problem index, 0 fwd | 1 bwd)``."""
    ids.need("l2r", "r2l")
    if n < 1:
        raise InfillError(f"the meeting n-gram length must be >= 1, got {n}")
    if len(prefixes) != len(suffixes):
        raise InfillError(f"{len(prefixes)} prefixes but {len(suffixes)} suffixes")
    if max_new_tokens < 1 or batch_size < 1:
        raise InfillError("max_new_tokens and batch_size must be >= 1")
    params = SamplingParams(temperature, top_k, top_p)
    params.validate()
    window = n if verify_window is None else verify_window
    probs = [_Problem(list(p), list(s)) for p, s in zip(prefixes, suffixes)]
    with eval_mode(model):
        for first in range(0, len(probs), batch_size):
            group = probs[first:first + batch_size]
            _mim_group(model, ids, group, params, n, max_new_tokens, window, min_agreement, verify,
                       vocab_size or model.cfg.vocab_size, seed, first)
    return [p.result for p in probs]


def mim_infill(model: GPT, tokenizer, prefixes: Sequence[str], suffixes: Sequence[str], *,
               max_prefix_tokens: int | None = None, max_suffix_tokens: int | None = None,
               **kwargs) -> list[InfillResult]:
    """Text-level MIM infilling (keywords as ``mim_infill_ids``)."""
    pairs = [_cut_contexts(tokenizer.encode(p), tokenizer.encode(s), max_prefix_tokens, max_suffix_tokens)
             for p, s in zip(prefixes, suffixes)]
    results = mim_infill_ids(model, infill_ids(tokenizer), [p for p, _ in pairs], [s for _, s in pairs],
                             vocab_size=real_vocab_size(model, tokenizer), **kwargs)
    for r in results:
        r.text = tokenizer.decode(r.ids)
    return results


def mim_generate(model: GPT, tokenizer, prompts: Sequence[str], **kwargs) -> list[str]:
    """Plain left-to-right generation from a MIM model: each prompt is read after ``<l2r>`` (the forward
    direction of training). Keywords as ``generate_ids``; returns one completion text per prompt."""
    ids = infill_ids(tokenizer)
    ids.need("l2r")
    prompt_ids = [[ids.l2r] + list(tokenizer.encode(p)) for p in prompts]
    outs = generate_ids(model, prompt_ids, eod_id=tokenizer.eod, vocab_size=real_vocab_size(model, tokenizer),
                        tokenizer=tokenizer, **kwargs)
    return [tokenizer.decode(o) for o in outs]


def infill(model: GPT, tokenizer, prefixes: Sequence[str], suffixes: Sequence[str], mode: str,
           **kwargs) -> list[InfillResult]:
    """Dispatch on ``mode`` ("fim-psm", "fim-spm" or "mim")."""
    if mode == "mim":
        return mim_infill(model, tokenizer, prefixes, suffixes, **kwargs)
    if mode in ("fim-psm", "fim-spm"):
        return fim_infill(model, tokenizer, prefixes, suffixes, spm=mode == "fim-spm", **kwargs)
    raise InfillError(f"unknown infilling mode '{mode}': choose one of {', '.join(MODES)}")
