"""`pretrain_code.py` logic: parse, --print-config, or train; user errors end in one line, not a traceback."""

from __future__ import annotations

import sys

from .config.base import ConfigError
from .config.cli import parse_args


def print_config(job) -> None:
    from .model import count_parameters
    from .training.trainer import resolve_tokenizer
    resolve_tokenizer(job)
    job.resolve_units()
    job.validate()
    print(job.to_yaml(), end="")
    print(f"padded_vocab_size: {job.model.padded_vocab_size}")
    print(f"parameters: {count_parameters(job.model)}")


def main(argv: list[str]) -> int:
    try:
        args = parse_args(argv)
        for note in args.notes:
            print(f"note: {note}", file=sys.stderr)
        if args.print_config:
            print_config(args.job)
            return 0
        from .training.trainer import pretrain
        pretrain(args.job)
        return 0
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        # User-fixable problems: one clear line (ValueError subclasses across the package carry the fix).
        if isinstance(exc, ValueError) and not _is_ours(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _is_ours(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("megatron_code") or isinstance(exc, (ConfigError, FileNotFoundError))
