"""Batched autoregressive generation with a KV cache: greedy, temperature, top-k, top-p, stop strings, EOD,
n samples per prompt; plus loading a checkpoint for inference.

Prompts of different lengths share a batch by left padding: row b has ``pad_b`` pad tokens, its positions count
from its first real token (``position = column - pad_b``) and an attention mask hides the pad keys from every real
query. A pad query attends only to itself (so no row of the softmax is empty and no NaN reaches the cache); real
queries never see pad keys, so each row computes exactly what it would alone. Rows that finish (EOD, stop string,
budget) are dropped from the batch and the cache (``KVCache.reorder``) so the rest run on a smaller batch.

Randomness is per row (see sampling.py): results do not depend on ``batch_size`` or on the other prompts.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..model.gpt import GPT
from .objective import prompt_lead
from .sampling import GenerationError, SamplingParams, choose_next, row_generator
from .stopping import CompletionTracker


# ---------------------------------------------------------------------------------------------- batching helpers
@dataclass
class PaddedBatch:
    """Left-padded prompts with room for ``max_new`` generated tokens.

    tokens (B, P + max_new) int64 (pads hold ``pad_id``), valid (B, P + max_new) bool (False on pad columns),
    positions (B, P + max_new) int64 (column - pad_b, clamped at 0 on pads); P = longest prompt."""

    tokens: torch.Tensor
    valid: torch.Tensor
    positions: torch.Tensor
    prompt_len: int

    @property
    def padded(self) -> bool:
        return not bool(self.valid[:, :self.prompt_len].all())

    def select(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` (1-D int64), e.g. after some rows finished."""
        self.tokens = self.tokens.index_select(0, index)
        self.valid = self.valid.index_select(0, index)
        self.positions = self.positions.index_select(0, index)


def left_pad(prompts: Sequence[Sequence[int]], max_new: int, device, pad_id: int = 0) -> PaddedBatch:
    p = max(len(x) for x in prompts)
    b = len(prompts)
    tokens = torch.full((b, p + max_new), pad_id, dtype=torch.long)
    valid = torch.ones(b, p + max_new, dtype=torch.bool)
    pads = torch.tensor([p - len(x) for x in prompts], dtype=torch.long)
    for i, x in enumerate(prompts):
        tokens[i, p - len(x):p] = torch.tensor(list(x), dtype=torch.long)
        valid[i, :p - len(x)] = False
    positions = (torch.arange(p + max_new)[None, :] - pads[:, None]).clamp(min=0)
    return PaddedBatch(tokens.to(device), valid.to(device), positions.to(device), p)


def attention_mask(valid_keys: torch.Tensor, num_queries: int) -> torch.Tensor:
    """valid_keys (B, Tk) bool -> (B, 1, Tq, Tk) bool (True = may attend) for the last Tq = num_queries columns.

    Query i sits at key column Tk - Tq + i; it may attend to valid keys and always to itself (a pad query with no
    valid key would otherwise produce a NaN softmax row). Causality is added by the model's attention."""
    tk = valid_keys.shape[1]
    own = torch.arange(tk - num_queries, tk, device=valid_keys.device)[:, None] == \
        torch.arange(tk, device=valid_keys.device)[None, :]  # (Tq, Tk)
    return (valid_keys[:, None, None, :] | own[None, None]).contiguous()


def check_prompts(model: GPT, prompts: Sequence[Sequence[int]]) -> None:
    """Every prompt non-empty with ids inside the embedding table (else a clear error, not an IndexError)."""
    rows = model.cfg.padded_vocab_size
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise GenerationError(f"prompt {i} is empty: give at least one token (e.g. the EOD id)")
        lo, hi = min(p), max(p)
        if lo < 0 or hi >= rows:
            raise GenerationError(f"prompt {i} holds token id {lo if lo < 0 else hi}, outside the model's "
                                  f"{rows} embedding rows: the prompt was tokenized with another vocabulary")


def check_length(model: GPT, prompt_len: int, max_new: int) -> None:
    cfg = model.cfg
    if cfg.position_embedding == "learned" and prompt_len + max_new > cfg.max_position_embeddings:
        raise GenerationError(f"prompt of {prompt_len} tokens + max_new_tokens {max_new} exceeds the model's "
                              f"{cfg.max_position_embeddings} learned positions: shorten the prompt or lower "
                              f"max_new_tokens")


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Dropout off and no autograd for the duration; restores the previous training flag."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _model_device(model: GPT) -> torch.device:
    return model.embed.word.weight.device


# ---------------------------------------------------------------------------------------------- the decode loop
def _decode_group(model: GPT, tracker: CompletionTracker, rows: list[int], params: SamplingParams,
                  generators: list[torch.Generator] | None, vocab_size: int | None, use_cache: bool) -> None:
    """Generate for tracker rows ``rows`` as one batch until each is finished. Without the cache every step
    recomputes the whole prefix (the slow reference the cached path is tested against)."""
    n = tracker.max_new_tokens
    batch = left_pad([tracker.prompts[r] for r in rows], n, _model_device(model))
    cache = model.new_cache(len(rows), batch.tokens.shape[1]) if use_cache else None
    active = list(rows)  # tracker row of each batch row
    gens = list(generators) if generators is not None else None
    cur, start = batch.prompt_len, 0  # columns [start, cur) are fed this step
    padded = batch.padded
    while active:
        if not use_cache:
            start = 0
        mask = attention_mask(batch.valid[:, :cur], cur - start) if padded else None
        logits = model(batch.tokens[:, start:cur], position_ids=batch.positions[:, start:cur], cache=cache,
                       mask=mask)  # (B, cur - start, padded_vocab)
        nxt = choose_next(logits[:, -1], params, vocab_size, gens)  # (B,)
        batch.tokens[:, cur] = nxt
        finished = [tracker.add(r, t) for r, t in zip(active, nxt.tolist())]
        start, cur = cur, cur + 1
        if any(finished):
            keep = [i for i, f in enumerate(finished) if not f]
            if not keep:
                break
            index = torch.tensor(keep, dtype=torch.long, device=batch.tokens.device)
            batch.select(index)
            if cache is not None:
                cache.reorder(index)
            active = [active[i] for i in keep]
            gens = [gens[i] for i in keep] if gens is not None else None
            padded = batch.padded


def _run(model: GPT, prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int, temperature: float,
         top_k: int, top_p: float, stop, seed: int, num_samples: int, batch_size: int, eod_id: int | None,
         vocab_size: int | None, decode: Callable | None, use_cache: bool,
         progress: bool) -> tuple[CompletionTracker, list[int]]:
    """Returns the tracker and, for output row j = prompt * num_samples + sample, the tracker row holding it."""
    params = SamplingParams(temperature, top_k, top_p)
    params.validate()
    if num_samples < 1 or batch_size < 1 or max_new_tokens < 0:
        raise GenerationError("num_samples and batch_size must be >= 1 and max_new_tokens >= 0")
    check_prompts(model, prompt_ids)
    if vocab_size is None:
        vocab_size = model.cfg.vocab_size
    # Greedy samples of one prompt are identical: compute each prompt once and repeat it.
    per_prompt = 1 if params.greedy else num_samples
    keys = [(i, s) for i in range(len(prompt_ids)) for s in range(per_prompt)]
    tracker = CompletionTracker([prompt_ids[i] for i, _ in keys], max_new_tokens=max_new_tokens, eod_id=eod_id,
                                stop=stop, decode=decode)
    out_rows = [i * per_prompt + (s if per_prompt > 1 else 0) for i in range(len(prompt_ids))
                for s in range(num_samples)]
    if max_new_tokens == 0 or not keys:
        return tracker, out_rows
    # Longest prompts first, so a group wastes little on padding and memory errors show up at once.
    order = sorted(range(len(keys)), key=lambda r: -len(tracker.prompts[r]))
    groups = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    check_length(model, len(tracker.prompts[order[0]]), max_new_tokens)
    bar = _progress(len(keys), progress)
    with eval_mode(model):
        for rows in groups:
            gens = None if params.greedy else [row_generator(seed, *keys[r]) for r in rows]
            _decode_group(model, tracker, rows, params, gens, vocab_size, use_cache)
            bar.update(len(rows))
    bar.close()
    return tracker, out_rows


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, desc="generating", unit="seq", leave=False)


# ---------------------------------------------------------------------------------------------- public API
def generate_ids(model: GPT, prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int = 128,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, stop: list[str] | None = None,
                 seed: int = 0, num_samples: int = 1, batch_size: int = 16, eod_id: int | None = None,
                 vocab_size: int | None = None, tokenizer=None, use_cache: bool = True,
                 progress: bool = False) -> list[list[int]]:
    """Completion ids (prompt excluded) for each prompt and sample: a flat list, prompt-major, of length
    ``len(prompt_ids) * num_samples`` (entry ``i * num_samples + s`` is sample s of prompt i).

    temperature 0 = greedy. Generation of a row ends at ``eod_id`` (not included), at a stop string (needs
    ``tokenizer``; the ids end with the token that completed it) or after ``max_new_tokens``. Ids >= vocab_size
    (default ``model.cfg.vocab_size``; the padded rows) are never produced. Sampling is reproducible for a given
    ``seed`` and independent of ``batch_size``. ``use_cache=False`` recomputes the whole prefix every step (slow;
    the reference the cached path is tested against)."""
    decode = tokenizer.decode if tokenizer is not None else None
    tracker, out_rows = _run(model, prompt_ids, max_new_tokens=max_new_tokens, temperature=temperature,
                             top_k=top_k, top_p=top_p, stop=stop, seed=seed, num_samples=num_samples,
                             batch_size=batch_size, eod_id=eod_id, vocab_size=vocab_size, decode=decode,
                             use_cache=use_cache, progress=progress)
    return [list(tracker.ids[r]) for r in out_rows]


def encode_prompts(tokenizer, prompts: Sequence[str], lead: Sequence[int] = ()) -> list[list[int]]:
    """Token ids of each prompt after `lead` (objective.prompt_lead: [<l2r>] for MIM); an empty prompt of a model
    without a lead becomes [EOD] (the model's document start)."""
    ids = tokenizer.encode_batch(list(prompts)) if hasattr(tokenizer, "encode_batch") else \
        [tokenizer.encode(p) for p in prompts]
    return [list(lead) + list(x) if len(x) or lead else [tokenizer.eod] for x in ids]


def real_vocab_size(model: GPT, tokenizer) -> int:
    """The ids that may be generated: the smaller of the model's true vocab and the tokenizer's."""
    sizes = [s for s in (model.cfg.vocab_size, getattr(tokenizer, "vocab_size", None)) if s]
    return min(sizes) if sizes else model.cfg.padded_vocab_size


def generate(model: GPT, tokenizer, prompts: list[str], *, max_new_tokens: int = 128, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, stop: list[str] | None = None, seed: int = 0,
             num_samples: int = 1, batch_size: int = 16, use_cache: bool = True,
             progress: bool = False) -> list[list[str]]:
    """``num_samples`` completions (the text after the prompt) for each prompt: result[i][s]. A MIM checkpoint's
    prompts start with ``<l2r>`` by themselves (inference/objective.py).

    Stops at the tokenizer's EOD, at the earliest of ``stop`` (the text is cut before it; e.g.
    stopping.HUMANEVAL_STOPS) or after ``max_new_tokens``. See generate_ids for the sampling contract."""
    if isinstance(prompts, str):
        raise GenerationError("prompts must be a list of strings, not one string: wrap it as [prompt]")
    ids = encode_prompts(tokenizer, prompts, prompt_lead(model, tokenizer))
    tracker, out_rows = _run(model, ids, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                             top_p=top_p, stop=stop, seed=seed, num_samples=num_samples, batch_size=batch_size,
                             eod_id=tokenizer.eod, vocab_size=real_vocab_size(model, tokenizer),
                             decode=tokenizer.decode, use_cache=use_cache, progress=progress)
    texts = [tracker.text(r) for r in out_rows]
    return [texts[i * num_samples:(i + 1) * num_samples] for i in range(len(prompts))]


def load_for_inference(ckpt_dir: str, device="cpu", dtype=torch.float32):
    """(GPT in eval mode on ``device``/``dtype``, Tokenizer) from a checkpoint directory of any training layout.
    The model carries the checkpoint's training objective as ``model.objective`` (causal, fim or mim)."""
    from ..data.tokenizer import build_tokenizer, load_tokenizer
    from ..training.checkpoint import load_consolidated

    job, state_dict, tokenizer_dir = load_consolidated(ckpt_dir)
    cfg = job.model
    if tokenizer_dir:
        tokenizer = load_tokenizer(tokenizer_dir)
    elif job.data.tokenizer_type:
        d = job.data
        tokenizer = build_tokenizer(d.tokenizer_type, d.tokenizer_model, d.vocab_file, d.merge_file)
    else:
        raise GenerationError(f"{ckpt_dir}: the checkpoint records no tokenizer (no saved tokenizer directory and "
                              f"no data.tokenizer_type); re-save it with a tokenizer")
    if cfg.vocab_size is None:
        cfg.vocab_size = tokenizer.vocab_size
    if tokenizer.vocab_size > cfg.padded_vocab_size:
        raise GenerationError(f"{ckpt_dir}: tokenizer has {tokenizer.vocab_size} tokens but the model only "
                              f"{cfg.padded_vocab_size} embedding rows: this tokenizer does not belong to the model")
    with torch.device("meta"):
        model = GPT(cfg)
    missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    if missing or unexpected:
        raise GenerationError(f"{ckpt_dir}: checkpoint does not match its model config (missing "
                              f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    model = model.to(device=device, dtype=dtype)
    model.eval()
    model.objective = job.objective.objective  # read by generate/contrastive_search (inference/objective.py)
    prompt_lead(model, tokenizer)  # a MIM tokenizer without <l2r> is refused here, not mid-evaluation
    return model, tokenizer


__all__ = ["PaddedBatch", "left_pad", "attention_mask", "check_prompts", "check_length", "eval_mode", "generate",
           "generate_ids", "encode_prompts", "real_vocab_size", "load_for_inference"]
