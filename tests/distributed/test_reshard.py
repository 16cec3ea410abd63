"""Changing layout: checkpoints saved at DP2 ZeRO-0/2/3, TP2, PP2 ZeRO-0/1 and TP2 x PP2 ZeRO-0/1 are converted
by tools/reshard_checkpoint.py (run as a user would) and resumed in one process with ZeRO-0; a DP2 ZeRO-2
checkpoint is also resumed at TP2, and converted checkpoints are resumed by pipeline runs (TP2 x PP2 ZeRO-0 -> PP4
and -> PP2 x DP2; TP2 x PP2 ZeRO-1 -> PP2 x DP2 ZeRO-1; PP2 with a tied embedding -> TP2 x PP2; DP2 ZeRO-0 ->
PP2 x DP2). The resumed losses continue the uninterrupted single-process run (1e-5 relative), and iteration,
consumed samples and config are carried over. Loading a checkpoint natively at another layout is a clear error
naming the tool."""

import json
import os
import subprocess
import sys

import pytest

from megatron_code.parallel.reshard import ReshardError, reshard_to_full
from megatron_code.testing import run_distributed
from megatron_code.training import checkpoint as ckpt

from _dp_train import MODELS as _MODELS
from _dp_train import assert_close_losses, run_jobs

# 4 blocks, so the model splits into 4 pipeline stages (the config allows at most one stage per block).
MODELS = dict(_MODELS, deep=_MODELS["parallel_mqa_swiglu"] + ["--model.num_layers", "4"])

pytestmark = [pytest.mark.distributed, pytest.mark.slow]  # ~40 s on a 2-core machine: 3 launches + 2 commands

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCES = {  # name: (model, layout flags of the saved run)
    "dp2_zero0": ("sequential", ["--zero-stage", "0"]),  # same files as a 1-process run: torch AdamW state
    "dp2_zero2": ("sequential", ["--zero-stage", "2"]),
    "dp2_zero3": ("parallel_mqa_swiglu", ["--zero-stage", "3"]),
    "tp2": ("parallel_mqa_swiglu", ["--tensor-model-parallel-size", "2"]),
    "pp2_zero1": ("sequential", ["--pipeline-model-parallel-size", "2", "--zero-stage", "1"]),
    "pp2_zero0": ("sequential", ["--pipeline-model-parallel-size", "2", "--zero-stage", "0"]),  # tied embedding
    "tp2_pp2_zero1": ("deep", ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size",
                                              "2", "--zero-stage", "1"]),  # 4 processes
    "tp2_pp2_zero0": ("deep", ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size",
                               "2", "--zero-stage", "0"]),  # 4 processes
}


def world2(rank, world, root):
    """Save every source at iteration 5; then resume dp2_zero2 converted to TP2 (converted here by rank 0)."""
    import torch.distributed as dist

    from megatron_code.parallel.reshard import reshard_to_full
    from megatron_code.training import checkpoint as ckpt

    jobs = [(name, MODELS[m] + flags + ["--save", f"{root}/{name}", "--exit-interval", "5"])
            for name, (m, flags) in SOURCES.items() if not name.startswith("tp2_pp2")]
    out = run_jobs(rank, world, jobs)
    if rank == 0:
        tag_dir = f"{root}/dp2_zero2/iter_0000005"
        job = ckpt.load_job_config(tag_dir)
        reshard_to_full(tag_dir, job, f"{root}/to_tp2", tp=2, pp=1, zero=0, opt_order=ckpt.optimizer_param_names(job))
    dist.barrier()
    out.update(run_jobs(rank, world, [("to_tp2", MODELS["sequential"] + ["--tensor-model-parallel-size", "2",
                                                                         "--load", f"{root}/to_tp2"])]))
    return out


# Layout-free checkpoints resumed by pipeline runs (4 processes): (source, target layout flags).
TO_PIPELINE = {
    "tp2_pp2_zero0->pp4": ("tp2_pp2_zero0", ["--pipeline-model-parallel-size", "4"]),
    "tp2_pp2_zero0->pp2_dp2": ("tp2_pp2_zero0", ["--pipeline-model-parallel-size", "2"]),
    "tp2_pp2_zero1->pp2_dp2_zero1": ("tp2_pp2_zero1", ["--pipeline-model-parallel-size", "2", "--zero-stage", "1"]),
    "dp2_zero0->pp2_dp2": ("dp2_zero0", ["--pipeline-model-parallel-size", "2"]),
    "pp2_zero1->tp2_pp2": ("pp2_zero1", ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"]),
}


def world4(rank, world, root):
    """Save the TP2 x PP2 source; rank 0 converts it (and the PP2 source of world2, tied embedding) to the
    layout-free format; then resume them as pipeline runs (ZeRO-0 unless the flags say otherwise)."""
    import torch.distributed as dist

    from megatron_code.parallel.reshard import reshard_to_full
    from megatron_code.training import checkpoint as ckpt

    out = run_jobs(rank, world, [(name, MODELS[SOURCES[name][0]] + SOURCES[name][1] + [
        "--save", f"{root}/{name}", "--exit-interval", "5"]) for name in ("tp2_pp2_zero1", "tp2_pp2_zero0")])
    if rank == 0:
        for src, pp in (("tp2_pp2_zero0", 4), ("tp2_pp2_zero1", 2), ("pp2_zero1", 2), ("dp2_zero0", 2)):
            tag_dir = f"{root}/{src}/iter_0000005"
            job = ckpt.load_job_config(tag_dir)
            reshard_to_full(tag_dir, job, f"{root}/{src}_pp", tp=1, pp=pp, zero=0,
                            opt_order=ckpt.optimizer_param_names(job))
    dist.barrier()
    out.update(run_jobs(rank, world, [(key, MODELS[SOURCES[src][0]] + flags + ["--load", f"{root}/{src}_pp"])
                                      for key, (src, flags) in TO_PIPELINE.items()]))
    return out


def world1(rank, world, root):
    jobs = [(f"ref:{m}", MODELS[m]) for m in MODELS]
    jobs += [(f"resumed:{name}", MODELS[m] + ["--load", f"{root}/{name}_1", "--save", f"{root}/{name}_1"])
             for name, (m, _) in SOURCES.items()]
    jobs += [("native:error", MODELS["sequential"] + ["--load", f"{root}/dp2_zero2"])]
    return run_jobs(rank, world, jobs)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reshard")
    w2 = run_distributed(world2, 2, str(root), timeout=600)[0]
    w2.update(run_distributed(world4, 4, str(root), timeout=600)[0])
    # One conversion through the command, as a user runs it; the others through the same function in-process
    # (each command start costs seconds of torch import on a busy 2-core machine).
    cmd = [sys.executable, os.path.join(ROOT, "tools", "reshard_checkpoint.py"), "--load", str(root / "dp2_zero2"),
           "--save", str(root / "dp2_zero2_1"), "--tensor-model-parallel-size", "1",
           "--pipeline-model-parallel-size", "1", "--zero-stage", "0"]
    cli = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "resume with --load" in cli.stdout
    for name in SOURCES:
        if name != "dp2_zero2":
            tag_dir = str(root / name / "iter_0000005")
            job = ckpt.load_job_config(tag_dir)
            reshard_to_full(tag_dir, job, str(root / f"{name}_1"), tp=1, pp=1, zero=0,
                            opt_order=ckpt.optimizer_param_names(job))
    w1 = run_distributed(world1, 1, str(root), timeout=600)[0]
    return {"root": root, "w2": w2, "w1": w1}


@pytest.mark.parametrize("name", list(SOURCES))
def test_resharded_to_one_process_continues_the_run(runs, name):
    model = SOURCES[name][0]
    ref = runs["w1"][f"ref:{model}"]["losses"]
    assert_close_losses(runs["w2"][name]["losses"], ref[:5], f"{name} before the save")
    resumed = runs["w1"][f"resumed:{name}"]
    assert resumed["first_iter"] == 6, "iteration was not carried over"
    assert_close_losses(resumed["losses"], ref[5:], f"{name} resharded to 1 process")
    meta = json.load(open(runs["root"] / f"{name}_1" / "iter_0000005" / "meta.json"))
    assert meta["consumed_samples"] == 20 and meta["layout"]["tp"] == 1 and meta["layout"]["zero"] == 0


@pytest.mark.parametrize("key", list(TO_PIPELINE))
def test_resharded_resumes_in_a_pipeline(runs, key):
    """Weights, Adam state, iteration and data position reach every stage: the losses continue the run."""
    resumed = runs["w2"][key]
    assert resumed["first_iter"] == 6, "iteration was not carried over"
    model = SOURCES[TO_PIPELINE[key][0]][0]
    assert_close_losses(resumed["losses"], runs["w1"][f"ref:{model}"]["losses"][5:], f"{key} resumed")


def test_zero2_resharded_to_tp2_continues_the_run(runs):
    resumed = runs["w2"]["to_tp2"]
    assert resumed["first_iter"] == 6
    assert_close_losses(resumed["losses"], runs["w1"]["ref:sequential"]["losses"][5:], "DP2 ZeRO-2 -> TP2")


def test_native_load_at_another_layout_names_the_tool(runs):
    err = runs["w1"]["native:error"]["error"]
    assert "another parallel layout" in err and "reshard_checkpoint.py" in err and "dp 2 -> 1" in err, err


def test_cli_errors_are_one_line(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "reshard_checkpoint.py"), "--load",
                          str(tmp_path / "missing"), "--save", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2 and "does not exist" in out.stderr and "Traceback" not in out.stderr


def test_reshard_refuses_what_it_cannot_do(runs, tmp_path):
    tag_dir = str(runs["root"] / "dp2_zero2" / "iter_0000005")
    with pytest.raises(ReshardError, match="already exists"):
        reshard_to_full(tag_dir, ckpt.load_job_config(tag_dir), str(runs["root"] / "dp2_zero2_1"), tp=1, pp=1,
                        opt_order=ckpt.optimizer_param_names(ckpt.load_job_config(tag_dir)))
