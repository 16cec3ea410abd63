"""Data parallelism and ZeRO through DeepSpeed: 10 steps of loss at DP2 with ZeRO 0/1/2/3 (and ZeRO-Offload)
equal the single-process run with the same global batch (1e-5 relative; CPU, gloo, fp32, dropout 0), for a
sequential-block model and a parallel-block MQA SwiGLU model, also combined with TP2 (TP2 x DP2, ZeRO-2/3); a run
stopped at iteration 5 and resumed at DP2 ZeRO-1 / ZeRO-3 reproduces the uninterrupted run exactly. ZeRO-3 also runs
with every parameter partitioned between uses (persistence threshold 0), and all of these use the fused head + loss.

One launch per world size: all DP2 layouts run one after another in the same two processes."""

import json
import os

import pytest

from megatron_code.testing import run_distributed

import _dp_train
from _dp_train import MODELS, assert_close_losses, run_jobs

pytestmark = [pytest.mark.distributed, pytest.mark.slow]  # ~50 s on a loaded 2-core machine, one launch per world size

STAGES = (0, 1, 2, 3)
OFFLOAD = (2, 3)  # ZeRO-Offload (--cpu-optimizer) for the stages where it matters most
RESUME = (1, 3)


@pytest.fixture(scope="module")
def single():
    jobs = [(m, MODELS[m]) for m in MODELS]
    return run_distributed(run_jobs, 1, jobs, timeout=300)[0]


def zero3_init_matches_plain_init(rank, world):
    """The ZeRO-3 build (deepspeed.zero.Init, weights drawn module by module) gives every rank its slice of the very
    weights the single-device build draws, and no rank holds more than its share."""
    import deepspeed
    import torch

    from megatron_code.config.cli import parse_args
    from megatron_code.model import GPT
    from megatron_code.parallel.engine import build_partitioned_gpt, init_distributed

    init_distributed("gloo")  # deepspeed.comm on top of the spawned group, as the trainer does
    out = {}
    for m in MODELS:
        job = parse_args(_dp_train.BASE + MODELS[m] + ["--zero-stage", "3"]).job
        torch.manual_seed(job.training.seed)
        part = build_partitioned_gpt(job, job.resolve_batch(world))
        torch.manual_seed(job.training.seed)
        plain = GPT(job.model)
        plain.init_weights(torch.Generator().manual_seed(job.training.seed))
        local = sum(p.ds_tensor.numel() for p in part.parameters())
        total = sum(p.numel() for p in plain.parameters())
        assert all(p.numel() == 0 for p in part.parameters()), "parameters left whole after zero.Init"
        params = dict(part.named_parameters())
        for name, ref in plain.named_parameters():
            with deepspeed.zero.GatheredParameters([params[name]]):
                assert torch.equal(params[name].data, ref.data), f"{m}: {name} differs from the plain init"
        out[m] = (local, total)
    return out


def dp2_launch(rank, world, jobs):
    return {"init": zero3_init_matches_plain_init(rank, world), **run_jobs(rank, world, jobs)}


@pytest.fixture(scope="module")
def dp2(tmp_path_factory):
    root = tmp_path_factory.mktemp("zero")
    jobs = [(f"{m}:z{s}", MODELS[m] + ["--zero-stage", str(s)]) for m in MODELS for s in STAGES]
    jobs += [(f"{m}:z{s}:offload", MODELS[m] + ["--zero-stage", str(s), "--cpu-optimizer"])
             for m in ("parallel_mqa_swiglu",) for s in OFFLOAD]
    # DeepSpeed keeps parameters under 1e5 elements whole after their first gather (stage3_param_persistence_
    # threshold): with it at 0 every parameter of these tiny models is partitioned between uses, as a real model's
    # large ones are, so the head's weight is gathered when GPT.forward reads it (tied: outside its own module).
    persist0 = root / "zero3_partitioned.json"
    persist0.write_text(json.dumps({"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}))
    jobs += [(f"{m}:z3:partitioned", MODELS[m] + ["--zero-stage", "3", "--deepspeed_config", str(persist0)])
             for m in MODELS]
    for s in RESUME:
        save = str(root / f"z{s}")
        args = MODELS["sequential"] + ["--zero-stage", str(s), "--save", save]
        jobs += [(f"resume:z{s}:first", args + ["--exit-interval", "5"]),
                 (f"resume:z{s}:second", args + ["--load", save])]
    out = run_distributed(dp2_launch, 2, jobs, timeout=600)
    init = [o.pop("init") for o in out]
    assert out[0] == out[1], "ranks disagree on the (DP-averaged) loss"
    out[0]["init"] = init
    out[0]["root"] = root
    return out[0]


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("stage", STAGES)
def test_dp2_zero_matches_single_process(single, dp2, model, stage):
    assert_close_losses(dp2[f"{model}:z{stage}"]["losses"], single[model]["losses"], f"{model} DP2 ZeRO-{stage}")


@pytest.mark.parametrize("model", list(MODELS))
def test_zero3_with_every_parameter_partitioned_matches_single_process(single, dp2, model):
    got = dp2[f"{model}:z3:partitioned"]
    assert got["fused_loss"] and dp2[f"{model}:z3"]["fused_loss"]  # the fused head + loss ran under ZeRO-3
    assert_close_losses(got["losses"], single[model]["losses"], f"{model} DP2 ZeRO-3, persistence threshold 0")


@pytest.mark.parametrize("stage", OFFLOAD)
def test_zero_offload_matches_single_process(single, dp2, stage):
    m = "parallel_mqa_swiglu"
    assert_close_losses(dp2[f"{m}:z{stage}:offload"]["losses"], single[m]["losses"], f"{m} DP2 ZeRO-{stage} offload")


@pytest.mark.parametrize("stage", RESUME)
def test_resume_at_dp2_is_exact(single, dp2, stage):
    first, second = dp2[f"resume:z{stage}:first"], dp2[f"resume:z{stage}:second"]
    assert len(first["losses"]) == 5 and second["first_iter"] == 6
    uninterrupted = dp2[f"sequential:z{stage}"]["losses"]
    assert first["losses"] + second["losses"] == uninterrupted  # bitwise: same layout, same arithmetic
    save = dp2["root"] / f"z{stage}"
    assert open(save / "latest").read().strip() == "iter_0000010"
    shards = [f for f in os.listdir(save / "iter_0000005") if f.startswith("zero_pp_rank_")]
    assert len(shards) == (4 if stage == 3 else 2), shards  # the optimizer really was partitioned over DP


def test_zero3_builds_partitioned_with_the_plain_init(dp2):
    for m in MODELS:
        (local0, total), (local1, _) = dp2["init"][0][m], dp2["init"][1][m]
        # each rank holds about half: every parameter is split in ceil(numel / 2) pieces
        assert local0 == local1 and total / 2 <= local0 <= total / 2 + len(dp2["init"]) * 64, (m, local0, total)


@pytest.fixture(scope="module")
def tp2_dp2():
    # TP2 x DP2 (4 ranks): the TP-sharded parameters are what ZeRO partitions over the data-parallel group.
    jobs = [(f"{m}:z{s}", MODELS[m] + ["--tensor-model-parallel-size", "2", "--zero-stage", str(s)])
            for m in MODELS for s in (2, 3)]
    return run_distributed(run_jobs, 4, jobs, timeout=900)  # one launch for all of them


@pytest.mark.parametrize("stage", (2, 3))
def test_zero_with_tensor_parallel_matches_single_process(single, tp2_dp2, stage):
    for m in MODELS:
        key = f"{m}:z{stage}"
        assert_close_losses(tp2_dp2[0][key]["losses"], single[m]["losses"], f"{m} TP2 x DP2 ZeRO-{stage}")
        assert tp2_dp2[0][key]["fused_loss"]  # the fused head + loss on each TP rank's vocabulary slice
        assert all(o[key]["losses"] == tp2_dp2[0][key]["losses"] for o in tp2_dp2)  # every rank: the same loss
