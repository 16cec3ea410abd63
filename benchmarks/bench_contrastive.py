#!/usr/bin/env python
"""Decoding throughput (new tokens per second), same run, every peer warmed up, then rounds in alternating order
A B C D, D C B A, ... (so no peer always runs first or last: an ABBA design against order effects on a shared
machine), median over rounds with the min-max spread:

A: ours, deterministic contrastive search (temperature 0): one batched forward of the B x k candidates per step on
   the shared KV cache (KVCache.reorder), then the cache reordered to the winners;
B: ours, stochastic contrastive search (temperature > 0): the same path plus one draw per row;
C: transformers' own sampling (`generate(do_sample=True)`) on the Hugging Face export of the same model;
D: ours, plain sampling (inference.generate.generate_ids, same temperature): C's algorithm in our code, so A/D is
   the price of the contrastive algorithm (k candidate positions per step) and D/C our sampler against theirs.

C is not the same algorithm (it has no candidate forward and no degeneration penalty): it is the cost of plain
sampling in the peer library, the floor any contrastive decoder pays on top of. transformers 5 no longer ships
contrastive search itself (moved to a Hub repository this machine cannot download), so there is no same-algorithm
peer. Every peer generates exactly --new-tokens tokens per row (no EOD stop).

    python benchmarks/bench_contrastive.py --rounds 8
    python benchmarks/bench_contrastive.py --rounds 12 --output-layer-ab   # A against A with the output layer
                                                                            # over every candidate (the old path)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=8, help="even, so each peer runs equally often in each position")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--alpha", type=float, default=0.4)
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output-layer-ab", action="store_true",
                   help="instead: A against A computing the logits of all B x k candidates and prompt positions "
                        "(what contrastive search did before it applied the output layer to the winners only)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    import transformers

    from megatron_code.config.model import ModelConfig
    from megatron_code.convert import export_model
    from megatron_code.inference.contrastive import contrastive_sample
    from megatron_code.inference.generate import generate_ids
    from megatron_code.model import GPT

    cfg = ModelConfig(num_layers=args.layers, hidden_size=args.hidden, num_attention_heads=8, vocab_size=8000,
                      max_position_embeddings=args.prompt_len + args.new_tokens + 8, position_embedding="rope",
                      norm="rmsnorm", activation="swiglu", ffn_hidden_size=4 * args.hidden, bias=False)
    model = GPT(cfg)
    model.init_weights(torch.Generator().manual_seed(0))
    model.eval()
    if args.output_layer_ab:
        return output_layer_ab(args, cfg, model)
    prompts = torch.randint(0, cfg.vocab_size, (args.batch, args.prompt_len),
                            generator=torch.Generator().manual_seed(1)).tolist()
    with tempfile.TemporaryDirectory() as d:
        target = export_model(cfg, model.state_dict(), d)
        hf = transformers.AutoModelForCausalLM.from_pretrained(d).eval()
    total = args.batch * args.new_tokens

    def ours(temperature):
        def run():
            out = contrastive_sample(model, prompts, top_k=args.k, alpha=args.alpha, temperature=temperature,
                                     max_new_tokens=args.new_tokens, batch_size=args.batch, seed=0)
            assert all(len(x[0]) == args.new_tokens for x in out)
        return run

    def theirs():
        with torch.no_grad():
            out = hf.generate(torch.tensor(prompts), do_sample=True, temperature=args.temperature, top_k=0,
                              top_p=1.0, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                              pad_token_id=0)
        assert out.shape[1] == args.prompt_len + args.new_tokens

    def ours_sampling():
        out = generate_ids(model, prompts, max_new_tokens=args.new_tokens, temperature=args.temperature,
                           batch_size=args.batch, seed=0)
        assert all(len(x) == args.new_tokens for x in out)

    peers = {"A: ours, contrastive T=0 (deterministic)": ours(0.0),
             f"B: ours, contrastive T={args.temperature} (stochastic)": ours(args.temperature),
             f"C: transformers sampling T={args.temperature} ({target})": theirs,
             f"D: ours, sampling T={args.temperature}": ours_sampling}
    load_before = os.getloadavg()[0]
    for fn in peers.values():  # warm-up: allocator, thread pool and kernel caches for every peer
        fn()
    times = {name: [] for name in peers}
    order = list(peers)
    for r in range(args.rounds):
        for name in (order if r % 2 == 0 else order[::-1]):  # A B C D, D C B A, ...
            t0 = time.perf_counter()
            peers[name]()
            times[name].append(time.perf_counter() - t0)
    print(f"{args.layers} layers x {args.hidden}, batch {args.batch}, prompt {args.prompt_len}, "
          f"{args.new_tokens} new tokens, k={args.k}, {args.threads} thread(s), {args.rounds} rounds (ABCD/DCBA), "
          f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    base = statistics.median(times[order[0]])
    print("| peer | median s (min-max) | tokens/s | speed vs A: median of same-round ratios (min-max) | "
          "ratio of medians |\n|---|---|---|---|---|")
    for name, ts in times.items():
        m = statistics.median(ts)
        ratios = [a / t for a, t in zip(times[order[0]], ts)]  # same round: both ran under about the same load
        print(f"| {name} | {m:.2f} ({min(ts):.2f}-{max(ts):.2f}) | {total / m:.0f} | "
              f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) | {base / m:.2f}x |")


def output_layer_ab(args, cfg, model) -> None:
    from megatron_code.inference.contrastive import contrastive_sample
    from megatron_code.model import GPT

    class AllLogits(GPT):  # computes the logits of every row it is given, then drops them, as the old path did
        def forward(self, *a, hidden_only=False, **k):
            if hidden_only:
                return super().forward(*a, return_hidden=True, **k)[1]
            return super().forward(*a, **k)

    old = AllLogits(cfg)
    old.load_state_dict(model.state_dict())
    old.eval()
    prompts = torch.randint(0, cfg.vocab_size, (args.batch, args.prompt_len),
                            generator=torch.Generator().manual_seed(1)).tolist()

    def run(m):
        return contrastive_sample(m, prompts, top_k=args.k, alpha=args.alpha, temperature=0.0,
                                  max_new_tokens=args.new_tokens, batch_size=args.batch)
    assert run(model) == run(old), "the two paths must emit the same tokens"
    times = {"winners": [], "all": []}
    for r in range(args.rounds):
        for name in (["winners", "all"] if r % 2 == 0 else ["all", "winners"]):
            t0 = time.perf_counter()
            run(model if name == "winners" else old)
            times[name].append(time.perf_counter() - t0)
    ratios = [a / w for a, w in zip(times["all"], times["winners"])]
    print(f"output layer on the winners only vs on all candidates: {statistics.median(ratios):.2f}x faster "
          f"(median of {args.rounds} same-round ratios, {min(ratios):.2f}-{max(ratios):.2f}), load average "
          f"{os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
