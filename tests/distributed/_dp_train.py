"""Shared by test_zero.py and test_reshard.py: run the real Trainer (as pretrain_code.py would) inside the ranks
of one spawned gloo group, several jobs one after another, so layouts of the same world size share one launch."""

from __future__ import annotations

# Tiny fp32 runs on mock data with dropout 0: every layout must give the single-process losses.
BASE = ["--preset", "tiny", "--model.vocab_size", "64", "--model.num_layers", "2", "--model.hidden_size", "32",
        "--model.num_attention_heads", "4", "--model.ffn_hidden_size", "64", "--seq-length", "16", "--mock-data",
        "--micro-batch-size", "2", "--global-batch-size", "4", "--hidden-dropout", "0", "--attention-dropout", "0",
        "--log-interval", "100", "--training.progress_bar", "false", "--eval-interval", "0", "--train-iters", "10",
        "--lr", "5e-3", "--lr-warmup-iters", "2"]
MODELS = {
    # GPT-2-like: sequential block, MHA, GELU, LayerNorm, learned positions, tied head, biases.
    "sequential": ["--model.block", "sequential", "--model.position_embedding", "learned", "--model.activation",
                   "gelu", "--model.norm", "layernorm", "--model.max_position_embeddings", "32"],
    # PaLM-like: parallel attention + MLP block, multi-query attention, SwiGLU, RMSNorm, RoPE, untied head, no bias.
    "parallel_mqa_swiglu": ["--model.block", "parallel", "--model.parallel_shared_norm", "true",
                            "--model.num_kv_heads", "1", "--model.activation", "swiglu", "--model.norm", "rmsnorm",
                            "--model.bias", "false", "--model.tie_embeddings", "false"],
}


def run_jobs(rank, world, jobs):
    """jobs: list of (key, extra args). Returns {key: [loss of each iteration run]} (rank 0's view; the trainer
    all-reduces the loss over DP, so every rank logs the same)."""
    import os
    import sys

    from megatron_code.config.cli import parse_args
    from megatron_code.training.trainer import Trainer

    devnull = open(os.devnull, "w")
    out = {}
    for key, extra in jobs:
        job = parse_args(BASE + list(extra)).job
        stdout, sys.stdout = sys.stdout, devnull  # the trainer's log lines; errors still propagate
        try:
            trainer = Trainer(job)
            history = trainer.train()
            out[key] = {"losses": [loss for _, loss in history["train_loss"]],
                        "first_iter": history["train_loss"][0][0] if history["train_loss"] else None,
                        "fused_loss": trainer.loss_path.fused}
        except Exception as exc:  # noqa: BLE001 - reported per job so one failure names its layout
            if not key.endswith(":error"):
                raise
            out[key] = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            sys.stdout = stdout
    devnull.close()
    return out


def assert_close_losses(got, want, what, rtol=1e-5):
    assert len(got) == len(want), f"{what}: {len(got)} losses vs {len(want)}"
    for i, (a, b) in enumerate(zip(got, want)):
        assert abs(a - b) <= rtol * abs(b), f"{what}: iteration {i + 1}: {a!r} vs single process {b!r}"
