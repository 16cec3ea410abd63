"""Fill-in-the-middle (FIM) as a pure data transform (FORMATS.md section 4; Bavarian et al., 2022, "Efficient
Training of Language Models to Fill in the Middle"; the StarCoder/SantaCoder data recipe).

Semantics, per document segment of a packed sample (segments are the runs between EOD tokens; the EODs stay where
they are):

* with probability ``rate`` the segment is detokenized, two cut points are drawn uniformly over its characters
  (``0..len(text)`` inclusive, sorted), and the three pieces are re-tokenized separately;
* with probability ``spm_rate`` the result is SPM ``<fim_prefix> <fim_suffix> suffix <fim_middle> prefix middle``,
  otherwise PSM ``<fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle``;
* each FIM segment grows by 3 sentinels and by any re-tokenization difference, so the whole sample is then
  truncated, or right-padded with ``<fim_pad>``, back to its original length (the tail is lost, as upstream);
* a piece that contains any other special token (``<pad>``, ``<l2r>``, a stray sentinel...) is left unchanged:
  detokenizing would turn it into plain text and re-tokenizing would not give the special id back;
* optionally (``split_token`` set) a segment is first split into files on that separator token and each non-empty
  file gets FIM independently with probability ``fragment_rate`` (``rate`` when None); separators stay in place.

Loss mask convention (shared with the trainer): the functions return a mask over the S+1 *tokens*, where
``mask[j] == 1`` means "token j may be a target". The trainer builds ``labels = tokens[1:]`` and uses
``loss_mask = mask[1:]``, so a position whose target is ``<fim_pad>`` carries no loss.

Randomness comes only from the ``rng`` argument (see ``rng.sample_rng``): the same (seed, epoch, index) gives the
same output in any worker and order. Draw order per non-empty piece: one uniform for the FIM decision; if chosen,
two cut points, then one uniform for SPM-vs-PSM. Empty pieces and pieces holding special tokens draw nothing.

``cfg.mode`` tells the dataset *where* to apply FIM: "sample" (``apply_fim`` on each packed sample, the StarCoder
way) or "document" (``apply_fim_to_document`` on each document before packing; no truncation or padding is then
needed because packing absorbs the length change). The functions themselves do not read ``mode``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ...errors import UserError

__all__ = ["FIMConfig", "FIMError", "FIMIds", "fim_ids", "apply_fim", "apply_fim_to_document", "fim_loss_mask",
           "FIM_PREFIX", "FIM_MIDDLE", "FIM_SUFFIX", "FIM_PAD"]

FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD = "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>"


class FIMError(UserError, ValueError):
    """A user-fixable FIM setup problem (bad rate, tokenizer without sentinels, unknown split token)."""


@dataclass(frozen=True)
class FIMConfig:
    """FIM hyper-parameters (flags ``--fim-rate``, ``--fim-spm-rate``, ``--fim-fragment-rate``,
    ``--fim-split-token``, ``--fim-mode``)."""

    rate: float = 0.5
    spm_rate: float = 0.5
    fragment_rate: Optional[float] = None  # per-file rate when split_token is set; None -> use `rate`
    split_token: Optional[str] = None  # file separator token (a special-token name or a one-token string)
    mode: str = "sample"  # "sample" (after packing) | "document" (before packing)

    def __post_init__(self):
        for name in ("rate", "spm_rate", "fragment_rate"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= float(value) <= 1.0:
                raise FIMError(f"FIM {name} must be in [0, 1], got {value}: fix --fim-{name.replace('_', '-')}")
        if self.mode not in ("sample", "document"):
            raise FIMError(f"FIM mode must be 'sample' or 'document', got '{self.mode}': fix --fim-mode")

    @property
    def file_rate(self) -> float:
        """Probability of FIM for one file when ``split_token`` is set."""
        return float(self.rate if self.fragment_rate is None else self.fragment_rate)

    @property
    def is_identity(self) -> bool:
        """True when no segment can ever be transformed (so ``apply_fim`` returns its input unchanged)."""
        return (self.file_rate if self.split_token is not None else float(self.rate)) == 0.0


@dataclass(frozen=True)
class FIMIds:
    """Token ids FIM needs, resolved once from a tokenizer."""

    prefix: int
    middle: int
    suffix: int
    pad: int
    eod: int
    split: Optional[int] = None
    specials: tuple = ()  # every special-token id of the tokenizer (pieces containing one are not transformed)


def fim_ids(tokenizer, split_token: Optional[str] = None) -> FIMIds:
    """Resolve the FIM sentinels (and the optional file separator) in ``tokenizer``.

    Raises FIMError naming the fix when the tokenizer has no FIM sentinels or ``split_token`` is not one token.
    """
    special = getattr(tokenizer, "special_tokens", {}) or {}
    missing = [name for name in (FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD) if name not in special]
    if missing:
        raise FIMError(f"the tokenizer has no {', '.join(missing)} token(s): FIM needs a tokenizer trained with the "
                       f"FIM sentinels (tools/train_tokenizer.py adds them); re-tokenize the data with it")
    split = None
    if split_token is not None:
        if split_token in special:
            split = int(special[split_token])
        else:
            ids = list(tokenizer.encode(split_token))
            if len(ids) != 1:
                raise FIMError(f"--fim-split-token '{split_token}' is {len(ids)} tokens with this tokenizer; "
                               f"it must be a single token (add it as a special token)")
            split = int(ids[0])
    return FIMIds(prefix=int(special[FIM_PREFIX]), middle=int(special[FIM_MIDDLE]), suffix=int(special[FIM_SUFFIX]),
                  pad=int(special[FIM_PAD]), eod=int(tokenizer.eod), split=split,
                  specials=tuple(sorted({int(v) for v in special.values()} | ({split} - {None}))))


def fim_loss_mask(tokens: np.ndarray, pad_id: int) -> np.ndarray:
    """(N,) float32: 1 where token j may be a target, 0 where it is ``<fim_pad>`` (see the module docstring)."""
    return (np.asarray(tokens) != pad_id).astype(np.float32)


def _encode3(tokenizer, texts: list) -> list:
    """Re-tokenize prefix/middle/suffix one by one (no ``encode_batch``: its Rust thread pool does not mix well
    with forked data-loader workers)."""
    return [np.asarray(tokenizer.encode(t), dtype=np.int64) for t in texts]


def _fim_piece(piece: np.ndarray, rng: np.random.Generator, rate: float, spm_rate: float, tokenizer,
               ids: FIMIds) -> np.ndarray:
    """FIM one run of tokens (a document or a file) with probability ``rate``; otherwise return it unchanged."""
    if piece.size == 0 or np.isin(piece, ids.specials).any() or not rng.random() < rate:
        return piece
    text = tokenizer.decode(piece.tolist())
    lo, hi = np.sort(rng.integers(0, len(text) + 1, size=2))
    prefix, middle, suffix = _encode3(tokenizer, [text[:lo], text[lo:hi], text[hi:]])
    if rng.random() < spm_rate:
        # SPM, the "variant 2" of Bavarian et al. 2022 section 3 (used by StarCoder): the prefix joins the middle.
        parts = ([ids.prefix, ids.suffix], suffix, [ids.middle], prefix, middle)
    else:
        parts = ([ids.prefix], prefix, [ids.suffix], suffix, [ids.middle], middle)
    return np.concatenate([np.asarray(p, dtype=np.int64) for p in parts])


def _fim_segment(segment: np.ndarray, rng, cfg: FIMConfig, tokenizer, ids: FIMIds) -> np.ndarray:
    """One EOD-free segment: whole (no split token) or file by file, separators kept in place."""
    if ids.split is None:
        return _fim_piece(segment, rng, float(cfg.rate), float(cfg.spm_rate), tokenizer, ids)
    return _map_runs(segment, ids.split,
                     lambda f: _fim_piece(f, rng, cfg.file_rate, float(cfg.spm_rate), tokenizer, ids))


def _map_runs(tokens: np.ndarray, sep: int, fn) -> np.ndarray:
    """Apply ``fn`` to each run between ``sep`` tokens (in order, empty runs included) and rejoin with ``sep``."""
    cuts = np.flatnonzero(tokens == sep)
    out, start = [], 0
    for cut in cuts:
        out += [fn(tokens[start:cut]), np.asarray([sep], dtype=np.int64)]
        start = cut + 1
    out.append(fn(tokens[start:]))
    return np.concatenate([np.asarray(o, dtype=np.int64) for o in out])


def _transform(tokens: np.ndarray, rng, cfg: FIMConfig, tokenizer, ids: FIMIds) -> np.ndarray:
    if tokens.ndim != 1:
        raise FIMError(f"FIM expects one 1-D sample of token ids, got shape {tokens.shape}")
    return _map_runs(tokens.astype(np.int64, copy=False), ids.eod,
                     lambda seg: _fim_segment(seg, rng, cfg, tokenizer, ids))


def apply_fim(tokens: np.ndarray, rng: np.random.Generator, cfg: FIMConfig, tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """FIM a packed sample of S+1 tokens, per EOD-delimited segment, keeping its length.

    Returns ``(tokens (S+1,), loss_mask (S+1,) float32)``: tokens in the input's dtype, truncated or right-padded
    with ``<fim_pad>``; ``loss_mask[j] == 0`` exactly where token j is ``<fim_pad>`` (the trainer uses
    ``loss_mask[1:]`` with ``labels = tokens[1:]``). With ``cfg.is_identity`` the input is returned as a copy.
    """
    tokens = np.asarray(tokens)
    ids = fim_ids(tokenizer, cfg.split_token)
    if cfg.is_identity:
        out = tokens.copy()
    else:
        new = _transform(tokens, rng, cfg, tokenizer, ids)
        n = tokens.shape[0]
        if new.shape[0] >= n:
            new = new[:n]
        else:
            new = np.concatenate([new, np.full(n - new.shape[0], ids.pad, dtype=np.int64)])
        out = new.astype(tokens.dtype, copy=False)
    return out, fim_loss_mask(out, ids.pad)


def apply_fim_to_document(doc_tokens: np.ndarray, rng: np.random.Generator, cfg: FIMConfig,
                          tokenizer) -> np.ndarray:
    """FIM one document before packing (``mode="document"``); the length changes and nothing is padded.

    A trailing (or any) EOD stays in place and segments between EODs are handled independently, exactly as in
    ``apply_fim``. Returns int64 token ids.
    """
    doc_tokens = np.asarray(doc_tokens)
    ids = fim_ids(tokenizer, cfg.split_token)
    if cfg.is_identity:
        return doc_tokens.astype(np.int64, copy=True)
    return _transform(doc_tokens, rng, cfg, tokenizer, ids)
