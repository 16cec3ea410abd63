"""Generate a completion from a checkpoint. Prints ONLY the completion text to stdout (logs go to stderr), so the
output can be piped or compared.

    python tools/generate.py --load CKPT_DIR --prompt "def fib(n):" --max-new-tokens 64 --temperature 0
    python tools/generate.py --load CKPT_DIR --prompt-file p.py --temperature 0.8 --top-p 0.95 --num-samples 4 \\
        --stop humaneval
    python tools/generate.py --load CKPT_DIR --prompt "def f(" --contrastive-alpha 0.6 --contrastive-k 4
    python tools/generate.py --load CKPT_DIR --prompt "def f(" --contrastive-alpha 0.4 --temperature 0.6 \
        --num-samples 5

With --num-samples N > 1 the samples are separated by a line holding --separator (default "=" * 20).
A MIM checkpoint's prompt is read after <l2r> by itself (the checkpoint records its objective).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import torch

from megatron_code.inference.contrastive import contrastive_sample
from megatron_code.inference.generate import generate, load_for_inference
from megatron_code.inference.objective import lead_token, objective_of
from megatron_code.inference.stopping import HUMANEVAL_STOPS

log = logging.getLogger("generate")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", required=True, help="checkpoint directory (any training layout)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text (escape sequences such as \\n are NOT interpreted)")
    src.add_argument("--prompt-file", help="read the prompt from this file ('-' = stdin)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1.0 = off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", nargs="*", default=None,
                   help="stop strings (Python escapes like \\n are interpreted); 'humaneval' = HumanEval's set")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--contrastive-alpha", type=float, default=None,
                   help="use contrastive search with this alpha; --temperature > 0 makes it stochastic (samples "
                        "differ), 0 is deterministic; --top-k/--top-p are ignored")
    p.add_argument("--contrastive-k", type=int, default=4, help="candidates per step for contrastive search")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--separator", default="=" * 20, help="line printed between samples when --num-samples > 1")
    return p.parse_args(argv)


def _stops(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    out: list[str] = []
    for v in values:
        if v == "humaneval":
            out.extend(HUMANEVAL_STOPS)
        else:
            out.append(v.encode("latin-1", "backslashreplace").decode("unicode_escape"))
    return out


def _prompt(args: argparse.Namespace) -> str:
    if args.prompt is not None:
        return args.prompt
    if args.prompt_file == "-":
        return sys.stdin.read()
    if not os.path.isfile(args.prompt_file):
        raise FileNotFoundError(f"--prompt-file {args.prompt_file} does not exist")
    with open(args.prompt_file, encoding="utf-8") as f:
        return f.read()


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    try:
        prompt = _prompt(args)
        t0 = time.time()
        model, tokenizer = load_for_inference(args.load, device=args.device, dtype=DTYPES[args.dtype])
        log.info("loaded %s (%d parameters, %s objective) in %.1fs", args.load, model.num_parameters(),
                 objective_of(model), time.time() - t0)
        if lead_token(objective_of(model)):
            log.info("prompts start with %s, as the model was trained", lead_token(objective_of(model)))
        t0 = time.time()
        stop = _stops(args.stop)
        if args.contrastive_alpha is not None:
            samples = contrastive_sample(model, tokenizer, [prompt], top_k=args.contrastive_k,
                                         alpha=args.contrastive_alpha, temperature=args.temperature,
                                         num_samples=args.num_samples, seed=args.seed,
                                         max_new_tokens=args.max_new_tokens, stop=stop,
                                         batch_size=args.batch_size)[0]
        else:
            samples = generate(model, tokenizer, [prompt], max_new_tokens=args.max_new_tokens,
                               temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, stop=stop,
                               seed=args.seed, num_samples=args.num_samples, batch_size=args.batch_size,
                               progress=args.num_samples > 1)[0]
        log.info("generated %d sample(s) in %.1fs", len(samples), time.time() - t0)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = sys.stdout
    for i, text in enumerate(samples):
        if i:
            out.write(f"\n{args.separator}\n")
        out.write(text)
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
