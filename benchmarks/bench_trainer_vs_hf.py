#!/usr/bin/env python
"""Training throughput: our trainer's step (DeepSpeed engine, world size 1) vs Hugging Face transformers
GPTNeoXForCausalLM with a plain PyTorch AdamW loop, same shape, same batch, same machine, interleaved A B A B.

Shape (issue 2): 6 layers, hidden 256, 8 heads, seq 256, vocab 8192, batch 8, rotary 0.5, parallel residual.
Precisions: fp32, and bf16. For bf16 the peer runs two ways, both reported: pure bf16 parameters with AdamW
("hf-bf16-params", the fastest plain loop, no fp32 master weights) and torch.autocast over fp32 parameters
("hf-bf16-autocast", mixed precision like ours: DeepSpeed keeps fp32 master weights).

    python benchmarks/bench_trainer_vs_hf.py [--rounds 5] [--steps 4] [--precisions fp32 bf16] [--with-unfused]

Prints tokens/s medians, the ratio ours/peer, and MFU of each against a matmul peak measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from deepspeed.runtime.utils import clip_grad_norm_

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_code.config import JobConfig  # noqa: E402
from megatron_code.model import flops_per_token  # noqa: E402
from megatron_code.parallel.engine import deepspeed_config, init_distributed, initialize_engine  # noqa: E402
from megatron_code.training.losses import causal_lm_loss, masked_mean_weights  # noqa: E402
from megatron_code.training.metrics import measure_matmul_peak  # noqa: E402
from megatron_code.training.optimizer import build_optimizer  # noqa: E402
from megatron_code.training.trainer import build_model  # noqa: E402

LAYERS, HIDDEN, HEADS, SEQ, VOCAB, BATCH = 6, 256, 8, 256, 8192, 8


def job_for(precision: str) -> JobConfig:
    job = JobConfig()
    job.update({
        "model": dict(num_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=HEADS, ffn_hidden_size=4 * HIDDEN,
                      vocab_size=VOCAB, max_position_embeddings=SEQ, position_embedding="rope", rotary_percent=0.5,
                      norm="layernorm", activation="gelu", block="parallel", parallel_shared_norm=False, bias=True,
                      tie_embeddings=False),
        "data": dict(seq_length=SEQ),
        "training": dict(micro_batch_size=BATCH, global_batch_size=BATCH, precision=precision),
        "optim": dict(lr=1e-4, weight_decay=0.1, clip_grad=1.0),
    })
    job.validate()
    return job


class Ours:
    def __init__(self, precision: str, fused: bool = True):
        from megatron_code.parallel.groups import ParallelGroups
        job = job_for(precision)
        self.job = job
        model = build_model(job, ParallelGroups.build())
        self.engine = initialize_engine(model, build_optimizer(model, job.optim), deepspeed_config(job, 1))
        self.pos = torch.arange(SEQ).unsqueeze(0).expand(BATCH, SEQ)
        self.mask = torch.ones(BATCH, SEQ)
        self.weights = masked_mean_weights(self.mask)
        self.fused = fused

    def step(self, tokens: torch.Tensor) -> None:
        if self.fused:  # what Trainer._loss does with training.fused_lm_loss (the default)
            loss = self.engine(tokens[:, :-1], self.pos, labels=tokens[:, 1:], loss_weights=self.weights)
        else:
            logits = self.engine(tokens[:, :-1], self.pos)
            loss = causal_lm_loss(logits, tokens[:, 1:], self.mask)
        self.engine.backward(loss)
        if self.job.training.precision == "fp32":  # the trainer clips itself on this path, with DeepSpeed's function
            clip_grad_norm_(self.engine.module.parameters(), 1.0)
        self.engine.step()


class HF:
    def __init__(self, mode: str):
        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
        cfg = GPTNeoXConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                            intermediate_size=4 * HIDDEN, rotary_pct=0.5, use_parallel_residual=True,
                            max_position_embeddings=SEQ, hidden_act="gelu", tie_word_embeddings=False)
        cfg._attn_implementation = "sdpa"
        self.model = GPTNeoXForCausalLM(cfg)
        self.mode = mode
        if mode == "bf16-params":
            self.model.to(torch.bfloat16)
        self.model.train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.1)

    def step(self, tokens: torch.Tensor) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.mode == "bf16-autocast"):
            # shift_labels: the same SEQ next-token targets as ours (HF would otherwise shift again and score SEQ-1)
            y = tokens[:, 1:].contiguous()  # (B, SEQ); HF's loss views it flat
            out = self.model(input_ids=tokens[:, :-1], labels=y, shift_labels=y)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def timed(runner, batches) -> float:
    t0 = time.perf_counter()
    for b in batches:
        runner.step(b)
    return len(batches) * BATCH * SEQ / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--with-unfused", action="store_true",
                    help="also run our step with the unfused head + loss (training.fused_lm_loss false)")
    args = ap.parse_args()
    init_distributed("gloo")
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=gen) for _ in range(args.steps)]
    fpt = flops_per_token(job_for("fp32").model, SEQ)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; flops/token {fpt:.3e}; "
          f"load average {os.getloadavg()[0]:.1f} at start")
    for precision in args.precisions:
        runners = {"ours": Ours(precision)}
        if args.with_unfused:
            runners["ours-unfused"] = Ours(precision, fused=False)
        if precision == "fp32":
            runners["hf-fp32"] = HF("fp32")
        else:
            runners["hf-bf16-params"] = HF("bf16-params")
            runners["hf-bf16-autocast"] = HF("bf16-autocast")
        for r in runners.values():  # warm up
            timed(r, batches[:2])
        rates: dict[str, list[float]] = {k: [] for k in runners}
        peaks = []
        for _ in range(args.rounds):  # interleaved: A B (C) A B (C) ...
            peaks.append(measure_matmul_peak(torch.bfloat16 if precision == "bf16" else torch.float32))
            for name, r in runners.items():
                rates[name].append(timed(r, batches))
        peak = statistics.median(peaks)
        print(f"load average {os.getloadavg()[0]:.1f} after [{precision}]")
        ours = statistics.median(rates["ours"])
        print(f"\n[{precision}] matmul peak (median of {args.rounds}): {peak / 1e9:.1f} GFLOP/s")
        for name in runners:
            med = statistics.median(rates[name])
            ratio = ours / med
            print(f"  {name:18s} {med:10,.0f} tokens/s  MFU {100 * med * fpt / peak:5.1f}%"
                  + ("" if name == "ours" else f"  ours/this = {ratio:.2f}x")
                  + f"  (runs: {', '.join(f'{x:,.0f}' for x in rates[name])})")


if __name__ == "__main__":
    main()
