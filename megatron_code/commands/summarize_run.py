"""Summarize a training run from SAVE/metrics.jsonl: validation loss curve, its drop, and throughput.

    python tools/summarize_run.py --save DIR [--min-drop 0.4]

With --min-drop, exits non-zero unless the last validation loss is at least that fraction below the first
(the quick start uses it to show the model learned)."""

import argparse
import json
import os
import sys


def read_metrics(save_dir: str) -> list[dict]:
    path = os.path.join(save_dir, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: pass the directory given to --save")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--save", required=True)
    ap.add_argument("--min-drop", type=float, default=None)
    args = ap.parse_args(argv)
    try:
        rows = read_metrics(args.save)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    valid = {}
    for r in rows:  # a resumed run may repeat iterations: the last record wins
        if r["kind"] == "valid":
            valid[r["iteration"]] = r["loss"]
    rates = [r["tokens_per_s"] for r in rows if r["kind"] == "interval"]
    if not valid:
        print("no validation records (train with --eval-interval N and a validation set)")
        return 1 if args.min_drop is not None else 0
    its = sorted(valid)
    print("validation loss:")
    for it in its:
        print(f"  iter {it:6d}  loss {valid[it]:.4f}")
    first, last = valid[its[0]], valid[its[-1]]
    drop = (first - last) / first
    print(f"validation loss fell {100 * drop:.1f}% (from {first:.4f} at iter {its[0]} to {last:.4f} at iter {its[-1]})")
    if rates:
        print(f"median training throughput: {sorted(rates)[len(rates) // 2]:,.0f} tokens/s")
    if args.min_drop is not None and drop < args.min_drop:
        print(f"FAILED: expected a drop of at least {100 * args.min_drop:.0f}%", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
