"""The flag lines of Megatron-LM's GPT-3 example (examples/gpt3/train_gpt3_175b_distributed.sh) and Megatron-
DeepSpeed's 350M dense example (examples_deepspeed/MoE/ds_pretrain_gpt_350M_dense.sh: MoE flags at one expert)
train here unchanged except paths, sizes and the launcher. (Megatron-DeepSpeed's 125M rebase line:
test_megatron_cmdline.py.) --fp16 becomes --bf16 where DeepSpeed's CPU accelerator has no fp16, as there."""

from __future__ import annotations

import json
import os
import sys

import pytest

from ._cmd import run
from megatron_code.testing import free_port

from .test_launchers import _script
from .test_megatron_cmdline import PRECISION, corpus  # noqa: F401 - the shared corpus fixture

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]


def _records(save: str) -> list[dict]:
    with open(os.path.join(save, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _precision(line: list[str]) -> list[str]:
    return [f"--{PRECISION}" if a == "--fp16" else a for a in line]


def gpt3_line(corpus, ckpt: str, tb: str) -> list[str]:  # noqa: F811 (the corpus fixture's value, passed on)
    # GPT_MODEL_ARGS, TRAINING_ARGS, MODEL_PARALLEL_ARGS, DATA_ARGS, EVAL_AND_LOGGING_ARGS in the script's order;
    # sizes: 96 -> 2 layers, 12288 -> 64 hidden, 96 -> 4 heads, 2048 -> 64 tokens, batch 1536 -> 4, TP8 x PP16 ->
    # TP1 x PP2, iterations and intervals shrunk; the batch-size schedule's sample counts shrunk alike.
    return _precision(f"""
        --num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 64 --max-position-embeddings 64
        --attention-backend auto
        --micro-batch-size 1 --global-batch-size 4 --step-batch-size-schedule SCHEDULE --train-iters 6
        --weight-decay 0.1 --adam-beta1 0.9 --adam-beta2 0.95 --init-method-std 0.006 --clip-grad 1.0 --fp16
        --lr 6.0e-5 --lr-decay-style cosine --min-lr 6.0e-6 --lr-warmup-fraction .001 --lr-decay-iters 5
        --tensor-model-parallel-size 1 --pipeline-model-parallel-size 2
        --data-path {corpus['data']} --vocab-file {corpus['vocab']} --merge-file {corpus['merges']} --split 949,50,1
        --log-interval 1 --save-interval 3 --eval-interval 3 --save {ckpt} --load {ckpt} --eval-iters 1
        --tensorboard-dir {tb}
    """.split()).copy()


def _quoted(line: list[str]) -> list[str]:
    # The script quotes the schedule: one argument "0:16 2.4B:320 ..." (thresholds in tokens: here a batch of 2
    # samples, then 4 from 512 tokens = 8 samples on)
    return ["0:2 512:4" if a == "SCHEDULE" else a for a in line]


def test_megatron_lm_gpt3_example_line(corpus, tmp_path):  # noqa: F811
    ckpt, tb = str(tmp_path / "ckpt"), str(tmp_path / "tb")
    line = _quoted(gpt3_line(corpus, ckpt, tb))
    tr = _script("torchrun")
    launcher = ([sys.executable, tr] if tr else [sys.executable, "-m", "torch.distributed.run"]) + [
        "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    proc = run(line, launcher=launcher, timeout=800)
    train = {r["iteration"]: r for r in _records(ckpt) if r["kind"] == "train"}
    assert sorted(train) == list(range(1, 7)), proc.stdout[-3000:]
    assert all(0 < r["loss"] < 7.0 for r in train.values())
    assert open(os.path.join(ckpt, "latest_checkpointed_iteration.txt")).read() == "6"
    assert " iteration        6/       6 |" in proc.stdout
    # the step schedule: 2 samples per batch until 8 samples are consumed, then 4
    assert [train[i]["consumed_samples"] for i in range(1, 7)] == [2, 4, 6, 8, 12, 16]


def mds_350m_line(corpus, ckpt: str, tb: str, ds_json: str) -> list[str]:  # noqa: F811 (as gpt3_line)
    # megatron_options, data_options, deepspeed_options as the script assembles them (EP_SIZE=1, MLC=0.01,
    # capacity factors 1.0, MOE_MIN_CAP=4, ACTIVATION_CHECKPOINT=true); sizes, token budgets and paths shrunk.
    seq, tokens = 64, 64 * 16
    return _precision(f"""
        --override-opt_param-scheduler --adam-beta1 0.9 --adam-beta2 0.95 --tensor-model-parallel-size 1
        --moe-expert-parallel-size 1 --num-experts 1 --moe-loss-coeff 0.01 --moe-train-capacity-factor 1.0
        --moe-eval-capacity-factor 1.0 --moe-min-capacity 4 --init-method-std 0.02 --lr-decay-tokens {tokens}
        --lr-warmup-tokens {2 * seq} --micro-batch-size 2 --exit-duration-in-mins 30000000 --global-batch-size 4
        --num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length {seq} --max-position-embeddings {seq}
        --train-tokens {tokens} --train-samples 100 --lr 3.0e-4 --min-lr 1.0e-6 --lr-decay-style cosine
        --split 98,2,0 --log-interval 1 --eval-interval 2 --eval-iters 1 --save-interval 4 --weight-decay 0.1
        --clip-grad 1.0 --hysteresis 2 --num-workers 0 --fp16 --load {ckpt} --save {ckpt} --tensorboard-queue-size 1
        --log-timers-to-tensorboard --log-batch-size-to-tensorboard --log-validation-ppl-to-tensorboard
        --tensorboard-dir {tb} --checkpoint-activations --disable-moe-token-dropping
        --vocab-file {corpus['vocab']} --merge-file {corpus['merges']} --data-path {corpus['data']} --data-impl mmap
        --deepspeed --deepspeed_config {ds_json} --pipeline-model-parallel-size 1
        --deepspeed-activation-checkpointing
    """.split())


def test_megatron_deepspeed_350m_dense_example_line(corpus, tmp_path):  # noqa: F811
    from .test_megatron_cmdline import _ds_json

    ckpt, tb = str(tmp_path / "ckpt"), str(tmp_path / "tb")
    ds_json = _ds_json(str(tmp_path / "ds.json"), PRECISION)
    proc = run(mds_350m_line(corpus, ckpt, tb, ds_json), timeout=800)
    train = {r["iteration"]: r for r in _records(ckpt) if r["kind"] == "train"}
    assert sorted(train) == list(range(1, 5)), proc.stdout[-3000:]
    assert "--num-experts 1: accepted (the off value)" in proc.stderr
    from .test_megatron_tensorboard import _scalars
    sc = _scalars(tb)
    assert "lm-loss-training/lm loss vs tokens" in sc and "lm-loss-validation/lm loss validation" in sc
