"""Megatron-LM's data-args files: --data-args-path (the --data-path list from a file, for blends too long for a
command line) and --per-split-data-args-path (one blend per split, JSON). Read by the trainer's command line and by
tools/build_index.py."""

from __future__ import annotations

import json

from .base import ConfigError


def _read_text(flag: str, path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"--{flag} {path}: cannot read it ({exc.strerror})") from None


def read_data_args_file(path: str, flag: str = "data-args-path") -> list[str]:
    """Megatron-LM's --data-args-path: the --data-path list ([weight] prefix items, whitespace-separated) read
    from a file, for blends too long for a command line."""
    items = _read_text(flag, path).split()
    if not items:
        raise ConfigError(f"--{flag} {path}: the file is empty (expected [weight] prefix items as for --data-path)")
    return items


def read_per_split_data_args_file(path: str, flag: str = "per-split-data-args-path") -> dict[str, list[str]]:
    """Megatron-LM's --per-split-data-args-path: JSON {"train": ..., "valid": ..., "test": ...}, each a list or a
    whitespace-separated string of [weight] prefix items ("valid"/"test" may be missing or null). Returns
    {split: items} for the splits given."""
    try:
        spec = json.loads(_read_text(flag, path))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--{flag} {path}: not valid JSON ({exc})") from None
    if not isinstance(spec, dict) or spec.get("train") is None:
        raise ConfigError(f"--{flag} {path}: expected a JSON object with a \"train\" entry (and \"valid\", "
                          f"\"test\"), each a list or a string of [weight] prefix items")
    unknown = sorted(set(spec) - {"train", "valid", "test"})
    if unknown:
        raise ConfigError(f"--{flag} {path}: unknown key(s) {', '.join(unknown)} (keys: train, valid, test)")
    out = {}
    for split in ("train", "valid", "test"):
        items = spec.get(split)
        if items is None:
            continue
        if isinstance(items, str):
            items = items.split()
        if not isinstance(items, list) or not items or not all(isinstance(x, (str, int, float)) for x in items):
            raise ConfigError(f"--{flag} {path}: \"{split}\" must be a non-empty list or string of [weight] prefix "
                              f"items")
        out[split] = [str(x) for x in items]
    return out


def check_data_args_exclusive(data_args_path, per_split_path, given: set[str]) -> None:
    """The data-args files replace the flags they stand for: giving both is an error (`given`: which of
    data-path / train-data-path / valid-data-path / test-data-path the command line has)."""
    if data_args_path and per_split_path:
        raise ConfigError("--data-args-path and --per-split-data-args-path both given: use one (a blend split by "
                          "--split, or one blend per split)")
    if data_args_path and "data-path" in given:
        raise ConfigError("--data-args-path and --data-path both given: the file replaces --data-path; use one")
    clash = sorted(given & {"train-data-path", "valid-data-path", "test-data-path"})
    if per_split_path and clash:
        raise ConfigError(f"--per-split-data-args-path and --{clash[0]} both given: the file gives every split; "
                          f"use one")
