"""Which tokenizer made a dataset: a sidecar `PREFIX.tokenizer.json` beside `PREFIX.bin/.idx`.

Two tokenizers of the same vocabulary size give data that trains without a word (every id is in range) but means
something else. tools/preprocess_data.py (and merge) write the tokenizer's fingerprint (SHA-256 over its type and
model files, Tokenizer.fingerprint) beside each dataset; the trainer compares it with its own tokenizer before it
builds any index. Megatron-LM and Megatron-DeepSpeed read only `.bin/.idx`, so the sidecar costs them nothing; data
made elsewhere (no sidecar) is accepted unchecked.
"""

from __future__ import annotations

import json
import os

from ..utils import atomic
from .indexed import IndexedDatasetError

SUFFIX = ".tokenizer.json"


class DatasetTokenizerError(IndexedDatasetError):
    """The dataset was tokenized with another tokenizer than the one given."""


def sidecar_path(prefix: str) -> str:
    return prefix + SUFFIX


def describe(tokenizer) -> dict:
    return {"fingerprint": tokenizer.fingerprint(), "tokenizer_type": tokenizer.tokenizer_type,
            "vocab_size": int(tokenizer.vocab_size), "eod": int(tokenizer.eod)}


def write_sidecar(prefix: str, tokenizer=None, record: dict | None = None) -> None:
    """Write the sidecar for `prefix` (from a tokenizer, or a record read from another sidecar), atomically."""
    record = record if record is not None else describe(tokenizer)
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    atomic.write_text(sidecar_path(prefix), json.dumps(record, indent=1, sort_keys=True) + "\n")


def read_sidecar(prefix: str) -> dict | None:
    """The recorded tokenizer of `prefix`, or None when the dataset has no sidecar (made by another tool)."""
    path = sidecar_path(prefix)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetTokenizerError(f"{path} is unreadable ({exc}): delete it to train unchecked, or re-run "
                                    f"tools/preprocess_data.py") from None
    if not isinstance(record, dict) or not isinstance(record.get("fingerprint"), str):
        raise DatasetTokenizerError(f"{path} holds no tokenizer fingerprint: delete it to train unchecked, or "
                                    f"re-run tools/preprocess_data.py")
    return record


def check_dataset_tokenizer(prefixes, fingerprint: str | None, tokenizer_desc: str = "the given tokenizer") -> int:
    """Raise when a dataset's sidecar names another tokenizer than `fingerprint`. Returns how many were checked."""
    checked = 0
    if not fingerprint:
        return 0
    for prefix in prefixes:
        record = read_sidecar(prefix)
        if record is None:
            continue
        checked += 1
        if record["fingerprint"] != fingerprint:
            raise DatasetTokenizerError(
                f"{prefix} was tokenized with another tokenizer ({record.get('tokenizer_type')}, vocabulary "
                f"{record.get('vocab_size')}, fingerprint {record['fingerprint'][:12]}) than {tokenizer_desc} "
                f"(fingerprint {fingerprint[:12]}): pass the tokenizer the data was made with, or re-run "
                f"tools/preprocess_data.py with this one")
    return checked


def merged_record(prefixes) -> dict | None:
    """The sidecar record for a merge of `prefixes`: theirs when all agree; None when none has one; an error when
    they name different tokenizers (their ids mean different things)."""
    records = [(p, read_sidecar(p)) for p in prefixes]
    known = [(p, r) for p, r in records if r is not None]
    if not known:
        return None
    fps = {r["fingerprint"] for _, r in known}
    if len(fps) > 1:
        a, b = known[0], next(x for x in known if x[1]["fingerprint"] != known[0][1]["fingerprint"])
        raise DatasetTokenizerError(f"cannot merge {a[0]} and {b[0]}: they were tokenized with different "
                                    f"tokenizers (fingerprints {a[1]['fingerprint'][:12]} vs "
                                    f"{b[1]['fingerprint'][:12]}); re-tokenize them with one tokenizer")
    return known[0][1]
