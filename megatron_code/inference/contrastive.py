"""Contrastive search (Su et al., 2022, "A Contrastive Framework for Neural Text Generation").

At each step the k most likely next tokens v are candidates; each is scored

    score(v) = (1 - alpha) * p(v | x<t) - alpha * max_j cos(h_v, h_j)

where h_v is the final hidden state (after the final norm) at the candidate's position when v is appended, and
h_j ranges over the hidden states of every real token of the context so far (prompt and generated). The best
candidate is emitted. alpha = 0 is greedy search.

Stochastic contrastive search (for pass@k, where n samples per problem must differ): with temperature T > 0 the
emitted candidate is drawn from softmax(score / T) over the k candidates instead of the argmax; T -> 0 is the
deterministic search above (T = 0 is exactly it). Each (prompt, sample) row draws from its own generator
(sampling.row_generator), so samples do not depend on the batch size or on the other rows.

The fast path batches prompts (left padding, as in generate.py) and candidates: the KV cache of B rows is
expanded to B*k rows (``KVCache.reorder``), all candidates run in one forward of one token each, and the cache is
reordered back to the winners. ``contrastive_search_reference`` recomputes everything without a cache, one prompt
at a time; it is the spec the fast path is tested against.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..model.gpt import GPT
from .generate import (attention_mask, check_length, check_prompts, encode_prompts, eval_mode, left_pad,
                       real_vocab_size)
from .objective import prompt_lead
from .sampling import GenerationError, mask_padded_vocab, row_generator
from .stopping import CompletionTracker


def _validate(top_k: int, alpha: float, vocab_size: int, max_new_tokens: int) -> None:
    if not 1 <= top_k <= vocab_size:
        raise GenerationError(f"contrastive top_k must be in [1, vocab size {vocab_size}], got {top_k}")
    if not 0.0 <= alpha <= 1.0:
        raise GenerationError(f"contrastive alpha must be in [0, 1], got {alpha}")
    if max_new_tokens < 0:
        raise GenerationError("max_new_tokens must be >= 0")


def _degeneration_penalty(cand_hidden: torch.Tensor, context: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """cand_hidden (B, k, H), context (B, T, H), valid (B, T) bool -> max cosine similarity (B, k), fp32."""
    c = F.normalize(cand_hidden.float(), dim=-1)
    ctx = F.normalize(context.float(), dim=-1)
    sim = torch.einsum("bkh,bth->bkt", c, ctx)  # (B, k, T)
    sim = sim.masked_fill(~valid[:, None, :], float("-inf"))
    return sim.max(dim=-1).values


def _pick(score: torch.Tensor, temperature: float, gens: list[torch.Generator] | None) -> torch.Tensor:
    """score (B, k) -> chosen candidate per row (B,): argmax at temperature 0, else a draw from
    softmax(score / temperature) with row b's generator (on the CPU, so a seed gives the same draws anywhere)."""
    if temperature == 0.0:
        return score.argmax(dim=-1)
    probs = torch.softmax(score.float() / temperature, dim=-1).cpu()
    return torch.cat([torch.multinomial(probs[i], 1, generator=gens[i]) for i in range(probs.shape[0])]) \
        .to(score.device)


def _search_group(model: GPT, tracker: CompletionTracker, rows: list[int], top_k: int, alpha: float,
                  vocab_size: int, temperature: float = 0.0, gens: list[torch.Generator] | None = None) -> None:
    n = tracker.max_new_tokens
    batch = left_pad([tracker.prompts[r] for r in rows], n, model.embed.word.weight.device)
    b, p = len(rows), batch.prompt_len
    cache = model.new_cache(b, p + n)
    mask = attention_mask(batch.valid[:, :p], p) if batch.padded else None
    # Logits are needed at one position per row: the prompt's last, then each step's chosen candidate. Only those
    # rows go through the output layer (of the B x k candidates, k - 1 per row are discarded).
    hidden = model(batch.tokens[:, :p], position_ids=batch.positions[:, :p], cache=cache, mask=mask,
                   hidden_only=True)  # (B, P, H)
    context = hidden.new_zeros(b, p + n, hidden.shape[-1])  # hidden states of the real tokens so far
    context[:, :p] = hidden
    next_logits = model.logits(hidden[:, -1:])[:, 0]  # (B, V)
    active, cur = list(rows), p
    while active:
        b = len(active)
        probs = torch.softmax(mask_padded_vocab(next_logits, vocab_size), dim=-1)  # (B, V) fp32
        top_p, top_ids = probs.topk(top_k, dim=-1)  # (B, k)
        # Expand every row to its k candidates: batch row b*k + j is candidate j of row b.
        expand = torch.arange(b, device=top_ids.device).repeat_interleave(top_k)
        cache.reorder(expand)
        valid = batch.valid[:, :cur + 1].index_select(0, expand)
        cand_mask = attention_mask(valid, 1) if batch.padded else None
        c_hidden = model(top_ids.reshape(b * top_k, 1),
                         position_ids=batch.positions[:, cur:cur + 1].index_select(0, expand),
                         cache=cache, mask=cand_mask, hidden_only=True)  # (B*k, 1, H)
        c_hidden = c_hidden.view(b, top_k, -1)
        penalty = _degeneration_penalty(c_hidden, context[:, :cur], batch.valid[:, :cur])
        score = (1.0 - alpha) * top_p - alpha * penalty  # (B, k)
        best = _pick(score, temperature, gens)  # (B,)
        rows_b = torch.arange(b, device=best.device)
        chosen = rows_b * top_k + best
        cache.reorder(chosen)
        token = top_ids[rows_b, best]
        batch.tokens[:, cur] = token
        context[:, cur] = c_hidden[rows_b, best]
        next_logits = model.logits(c_hidden[rows_b, best][:, None])[:, 0]  # (B, V): the winners only
        cur += 1
        finished = [tracker.add(r, t) for r, t in zip(active, token.tolist())]
        if any(finished):
            keep = [i for i, f in enumerate(finished) if not f]
            if not keep:
                break
            index = torch.tensor(keep, dtype=torch.long, device=token.device)
            batch.select(index)
            cache.reorder(index)
            context = context.index_select(0, index)
            next_logits = next_logits.index_select(0, index)
            active = [active[i] for i in keep]
            gens = [gens[i] for i in keep] if gens is not None else None


def _prepare(model: GPT, tokenizer_or_ids, prompts, eod_id, vocab_size):
    """-> (prompt ids, decode or None, eod_id, vocab_size, tokenizer given?)."""
    if hasattr(tokenizer_or_ids, "encode") and hasattr(tokenizer_or_ids, "decode"):
        tok = tokenizer_or_ids
        if prompts is None or isinstance(prompts, str):
            raise GenerationError("with a tokenizer, pass prompts as a list of strings")
        ids = encode_prompts(tok, prompts, prompt_lead(model, tok))
        return ids, tok.decode, tok.eod if eod_id is None else eod_id, vocab_size or real_vocab_size(model, tok), True
    if prompts is not None:
        raise GenerationError("pass either (tokenizer, prompts) or a list of prompt id lists, not both")
    ids = [list(map(int, x)) for x in tokenizer_or_ids]
    check_prompts(model, ids)
    return ids, None, eod_id, vocab_size or model.cfg.vocab_size or model.cfg.padded_vocab_size, False


def contrastive_search(model: GPT, tokenizer_or_ids, prompts: Sequence[str] | None = None, *, top_k: int = 4,
                       alpha: float = 0.6, max_new_tokens: int = 128, stop: list[str] | None = None,
                       eod_id: int | None = None, vocab_size: int | None = None, batch_size: int = 16,
                       progress: bool = False, temperature: float = 0.0, seed: int = 0):
    """Contrastive search for a batch of prompts, one completion each. Two call forms:

    - ``contrastive_search(model, tokenizer, ["def f(", ...])`` -> list of completion strings (text after the
      prompt, cut before the earliest ``stop`` string; ends at the tokenizer's EOD);
    - ``contrastive_search(model, [[ids], ...])`` -> list of completion id lists (ends at ``eod_id`` if given,
      excluded; stop strings are not available without a tokenizer).

    temperature 0 (default): deterministic. temperature > 0: stochastic (see the module docstring; row i draws
    as sample 0 of prompt i with ``seed``). Results do not depend on ``batch_size``. Ids >= vocab_size are never
    produced."""
    out = contrastive_sample(model, tokenizer_or_ids, prompts, top_k=top_k, alpha=alpha, temperature=temperature,
                             num_samples=1, seed=seed, max_new_tokens=max_new_tokens, stop=stop, eod_id=eod_id,
                             vocab_size=vocab_size, batch_size=batch_size, progress=progress)
    return [x[0] for x in out]


def contrastive_sample(model: GPT, tokenizer_or_ids, prompts: Sequence[str] | None = None, *, top_k: int = 4,
                       alpha: float = 0.6, temperature: float = 0.0, num_samples: int = 1, seed: int = 0,
                       max_new_tokens: int = 128, stop: list[str] | None = None, eod_id: int | None = None,
                       vocab_size: int | None = None, batch_size: int = 16, progress: bool = False):
    """``num_samples`` contrastive completions per prompt: result[i][s] (strings with a tokenizer, id lists
    without). At temperature 0 all samples of a prompt are the deterministic search (computed once)."""
    ids, decode, eod_id, vocab_size, textual = _prepare(model, tokenizer_or_ids, prompts, eod_id, vocab_size)
    _validate(top_k, alpha, vocab_size, max_new_tokens)
    if not temperature >= 0.0:
        raise GenerationError(f"contrastive temperature must be >= 0 (0 = deterministic), got {temperature}")
    if batch_size < 1 or num_samples < 1:
        raise GenerationError("batch_size and num_samples must be >= 1")
    per_prompt = 1 if temperature == 0.0 else num_samples
    keys = [(i, s) for i in range(len(ids)) for s in range(per_prompt)]
    tracker = CompletionTracker([ids[i] for i, _ in keys], max_new_tokens=max_new_tokens, eod_id=eod_id, stop=stop,
                                decode=decode)
    if max_new_tokens > 0 and keys:
        order = sorted(range(len(keys)), key=lambda r: -len(tracker.prompts[r]))
        check_length(model, len(tracker.prompts[order[0]]), max_new_tokens)
        from tqdm import tqdm

        with eval_mode(model), tqdm(total=len(keys), disable=not progress, desc="contrastive", leave=False) as bar:
            for i in range(0, len(order), batch_size):
                rows = order[i:i + batch_size]
                gens = [row_generator(seed, *keys[r]) for r in rows] if temperature > 0 else None
                _search_group(model, tracker, rows, top_k, alpha, vocab_size, temperature, gens)
                bar.update(len(rows))
    result = [tracker.text(r) if textual else list(tracker.ids[r]) for r in range(len(keys))]
    return [[result[i * per_prompt + (s if per_prompt > 1 else 0)] for s in range(num_samples)]
            for i in range(len(ids))]


def contrastive_search_reference(model: GPT, prompt_ids: Sequence[int], *, top_k: int = 4, alpha: float = 0.6,
                                 max_new_tokens: int = 128, eod_id: int | None = None,
                                 vocab_size: int | None = None, temperature: float = 0.0,
                                 generator: torch.Generator | None = None) -> list[int]:
    """The slow spec for one prompt: no cache, every forward recomputes the whole sequence. With temperature > 0
    the candidate is drawn from softmax(scores / temperature) with `generator`."""
    vocab_size = vocab_size or model.cfg.vocab_size
    _validate(top_k, alpha, vocab_size, max_new_tokens)
    seq, out = list(prompt_ids), []
    device = model.embed.word.weight.device
    with eval_mode(model):
        for _ in range(max_new_tokens):
            logits, hidden = model(torch.tensor([seq], device=device), return_hidden=True)
            probs = torch.softmax(mask_padded_vocab(logits[0, -1], vocab_size), dim=-1)
            top_p, top_ids = probs.topk(top_k)
            scores = []
            for j in range(top_k):
                _, h = model(torch.tensor([seq + [int(top_ids[j])]], device=device), return_hidden=True)
                h = h[0].float()  # (T + 1, H)
                sim = F.cosine_similarity(h[-1:], h[:-1], dim=-1)  # (T,)
                scores.append((1.0 - alpha) * float(top_p[j]) - alpha * float(sim.max()))
            if temperature == 0.0:
                token = int(top_ids[max(range(top_k), key=lambda j: scores[j])])
            else:
                probs_k = torch.softmax(torch.tensor(scores, dtype=torch.float32) / temperature, dim=0)
                token = int(top_ids[int(torch.multinomial(probs_k, 1, generator=generator))])
            if eod_id is not None and token == eod_id:
                break
            seq.append(token)
            out.append(token)
    return out


__all__ = ["contrastive_search", "contrastive_sample", "contrastive_search_reference"]
