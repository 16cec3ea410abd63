"""Fill in the middle between a prefix and a suffix with a trained checkpoint. Prints ONLY the middle to stdout
(diagnostics go to stderr with --verbose).

    python tools/infill.py --load CKPT --prefix-file a.py --suffix-file b.py --mode fim-psm
    python tools/infill.py --load CKPT --prefix $'def f(x):\\n    ' --suffix $'\\n    return y\\n' --mode mim --n 3

Modes: fim-psm / fim-spm (a model trained with --fim-rate > 0) and mim (a model trained with --mim; the two
directions decode together until they meet, see megatron_code/inference/infill.py).
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", required=True, help="checkpoint directory")
    pre = p.add_mutually_exclusive_group(required=True)
    pre.add_argument("--prefix")
    pre.add_argument("--prefix-file")
    suf = p.add_mutually_exclusive_group(required=True)
    suf.add_argument("--suffix")
    suf.add_argument("--suffix-file")
    p.add_argument("--mode", choices=["fim-psm", "fim-spm", "mim"], required=True)
    p.add_argument("--max-new-tokens", type=int, default=64, help="FIM: tokens; MIM: steps per direction")
    p.add_argument("--max-prefix-tokens", type=int, default=None, help="keep only the last N prefix tokens")
    p.add_argument("--max-suffix-tokens", type=int, default=None, help="keep only the first N suffix tokens")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=3, help="MIM: n-gram length of a meeting")
    p.add_argument("--min-agreement", type=float, default=1.0,
                   help="MIM: share of the tokens next to the join the other direction must predict")
    p.add_argument("--verbose", action="store_true", help="print how decoding ended to stderr")
    return p.parse_args(argv)


def _text(value, path):
    if value is not None:
        return value
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, encoding="utf-8") as f:
        return f.read()


def main(argv=None) -> int:
    args = parse_args(argv)
    from megatron_code.inference.generate import load_for_inference
    from megatron_code.inference.infill import infill
    from megatron_code.inference.sampling import GenerationError

    try:
        prefix, suffix = _text(args.prefix, args.prefix_file), _text(args.suffix, args.suffix_file)
        model, tokenizer = load_for_inference(args.load)
        kw = dict(max_new_tokens=args.max_new_tokens, max_prefix_tokens=args.max_prefix_tokens,
                  max_suffix_tokens=args.max_suffix_tokens, temperature=args.temperature, top_k=args.top_k,
                  top_p=args.top_p, seed=args.seed)
        if args.mode == "mim":
            kw.update(n=args.n, min_agreement=args.min_agreement)
        (res,) = infill(model, tokenizer, [prefix], [suffix], args.mode, **kw)
    except (GenerationError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(res.text)
    sys.stdout.flush()
    if args.verbose:
        print(f"\n[{args.mode}: {res.status} after {res.steps} steps, {len(res.ids)} tokens"
              + (f", {res.candidates} meeting(s) checked" if args.mode == "mim" else "") + "]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
