"""Build the sample-index caches of a whole blend ahead of time, so a large job does not stall on rank 0.

Pass the same data flags as the training run (also --data-args-path / --per-split-data-args-path); the caches
land in --data-cache-path, where the trainer's ranks then only memory-map them::

    python tools/build_index.py --data-path 0.3 A 0.7 B --split 969,30,1 --seq-length 2048 --seed 1234 \\
        --train-iters 100000 --global-batch-size 512 --eval-interval 1000 --eval-iters 10 --data-cache-path cache/
"""

from __future__ import annotations

import argparse
import sys
import time

from megatron_code.config.base import ConfigError
from megatron_code.config.data_args import (check_data_args_exclusive, read_data_args_file,
                                            read_per_split_data_args_file)
from megatron_code.data.blended import BlendError
from megatron_code.data.gpt_dataset import DatasetConfigError, build_gpt_datasets, num_samples_for
from megatron_code.data.helpers import SampleIndexError, cpp_available
from megatron_code.data.indexed import IndexedDatasetError


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-path", nargs="+", default=None)
    ap.add_argument("--train-data-path", nargs="+", default=None)
    ap.add_argument("--valid-data-path", nargs="+", default=None)
    ap.add_argument("--test-data-path", nargs="+", default=None)
    ap.add_argument("--data-args-path", default=None, help="a file holding the --data-path list (Megatron-LM's)")
    ap.add_argument("--per-split-data-args-path", default=None,
                    help='JSON {"train": [...], "valid": [...], "test": [...]} (Megatron-LM\'s)')
    ap.add_argument("--split", default="969,30,1")
    ap.add_argument("--seq-length", type=int, required=True)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--train-iters", type=int, default=None)
    ap.add_argument("--train-samples", type=int, default=None)
    ap.add_argument("--global-batch-size", type=int, required=True)
    ap.add_argument("--eval-interval", type=int, default=1000)
    ap.add_argument("--eval-iters", type=int, default=10)
    ap.add_argument("--data-cache-path", required=True)
    args = ap.parse_args(argv)
    if args.train_iters is not None and args.train_samples is not None:
        ap.error("give the run length once: --train-iters or --train-samples, not both")
    for flag in ("seq_length", "global_batch_size", "train_iters", "train_samples"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            ap.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    try:
        given = {f.replace("_", "-") for f in ("data_path", "train_data_path", "valid_data_path", "test_data_path")
                 if getattr(args, f) is not None}
        check_data_args_exclusive(args.data_args_path, args.per_split_data_args_path, given)
        if args.data_args_path:
            args.data_path = read_data_args_file(args.data_args_path)
        if args.per_split_data_args_path:
            for split, items in read_per_split_data_args_file(args.per_split_data_args_path).items():
                setattr(args, f"{split}_data_path", items)
        n = num_samples_for(global_batch_size=args.global_batch_size, train_iters=args.train_iters,
                            train_samples=args.train_samples, eval_interval=args.eval_interval,
                            eval_iters=args.eval_iters)
        t0 = time.perf_counter()
        out = build_gpt_datasets(data_path=args.data_path, split=args.split, train_data_path=args.train_data_path,
                                 valid_data_path=args.valid_data_path, test_data_path=args.test_data_path,
                                 seq_length=args.seq_length, seed=args.seed, num_samples=n,
                                 cache_dir=args.data_cache_path)
    except (ConfigError, DatasetConfigError, BlendError, IndexedDatasetError, SampleIndexError,
            FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    dt = time.perf_counter() - t0
    for name, ds, want in zip(("train", "valid", "test"), out, n):
        print(f"{name}: " + (f"{len(ds)} samples (asked {want})" if ds is not None else "empty"))
    print(f"built in {dt:.1f} s ({'C++' if cpp_available() else 'numpy'} helpers) -> {args.data_cache_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
