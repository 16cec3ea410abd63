"""bf16 training tracks fp32 on the DeepSpeed paths where it once did not (tiny models, 5 steps):

- ZeRO-0 without PP (FP16_UnfusedOptimizer over fp32 master weights): DeepSpeed creates the wrapper's optimizer
  state with a step on zero gradients, which put Adam's bias correction one step off (first update 0.74x) and
  applied weight decay once before training; parallel/engine.undo_state_initialization_step removes both.
- PP at ZeRO-0 (BF16_Optimizer): the fused head + loss in the pipeline's loss function lost the head's gradient;
  the trainer switches it off there (parallel/pipeline.loss_may_produce_gradients).
- Resuming at ZeRO-0: a bf16 pipeline's optimizer state could not be loaded, and --no-load-optim kept stale fp32
  master weights (training/checkpoint.load_checkpoint)."""

import os
import subprocess
import sys

import pytest

from megatron_code.testing import run_distributed

import _dp_train

pytestmark = pytest.mark.distributed

STEPS = ["--train-iters", "5", "--global-batch-size", "2"]  # one micro batch per step


def _three_runs(rank, world):
    from deepspeed.accelerator import get_accelerator

    from megatron_code.config.cli import parse_args
    from megatron_code.training.trainer import Trainer

    if not get_accelerator().is_bf16_supported():
        return None
    out = {}
    for name, extra in (("fp32", []), ("bf16-zero0", ["--bf16"]), ("bf16-zero1", ["--bf16", "--zero-stage", "1"])):
        trainer = Trainer(parse_args(_dp_train.BASE + _dp_train.MODELS["sequential"] + STEPS + extra).job)
        bias = trainer.engine.module.layers[0].norm1.bias
        before = bias.detach().float().clone()
        first = trainer.train_step
        seen = {}

        def step(batches, first=first, seen=seen, bias=bias, before=before, trainer=trainer):
            loss = first(batches)
            if "update" not in seen:  # the first update of a bias that starts at 0: Adam moves it by lr per element
                seen["update"] = float((bias.detach().float() - before).abs().mean())
                seen["lr"] = trainer.engine.optimizer.param_groups[0]["lr"]
            return loss

        trainer.train_step = step
        history = trainer.train()
        out[name] = {"losses": [v for _, v in history["train_loss"]], **seen,
                     "optimizer": type(trainer.engine.optimizer).__name__}
    return out


def test_bf16_at_zero0_takes_the_same_updates_as_zero1_and_tracks_fp32():
    out = run_distributed(_three_runs, 1, timeout=300)[0]
    if out is None:
        pytest.skip("DeepSpeed's accelerator here has no bf16")
    z0, z1, fp32 = out["bf16-zero0"], out["bf16-zero1"], out["fp32"]
    assert z0["optimizer"] == "FP16_UnfusedOptimizer"  # the wrapper this is about (bf16 without ZeRO)
    # the first update of a zero-initialised bias is lr per element (bf16 rounding: 3 significant digits)
    assert abs(z0["update"] - z0["lr"]) <= 0.01 * z0["lr"], (z0["update"], z0["lr"])
    _dp_train.assert_close_losses(z0["losses"], z1["losses"], "bf16 ZeRO-0 vs ZeRO-1", rtol=2e-4)
    _dp_train.assert_close_losses(z0["losses"], fp32["losses"], "bf16 ZeRO-0 vs fp32", rtol=5e-4)


def test_bf16_pipelines_track_fp32_and_keep_the_head_gradient():
    """PP2 in bf16, tied and untied heads. At ZeRO-0 DeepSpeed's BF16_Optimizer clears gradients of parameters used
    only in the pipeline's loss function, which lost the head's gradient when the fused head + loss ran there (the
    tied run fell 1% behind fp32 by step 3, lm_head did not move): the trainer switches the fused head off for it
    and keeps it at ZeRO-1. Both track fp32."""
    from deepspeed.accelerator import get_accelerator

    if not get_accelerator().is_bf16_supported():
        pytest.skip("DeepSpeed's accelerator here has no bf16")
    models = ("sequential", "parallel_mqa_swiglu")
    five = ["--train-iters", "5"]
    fp32 = run_distributed(_dp_train.run_jobs, 1, [(m, _dp_train.MODELS[m] + five) for m in models], timeout=300)[0]
    jobs = [(f"{m}:z{z}", _dp_train.MODELS[m] + five + ["--bf16", "--pipeline-model-parallel-size", "2",
                                                         "--zero-stage", str(z)]) for m in models for z in (0, 1)]
    got = run_distributed(_dp_train.run_jobs, 2, jobs, timeout=600)[0]
    for m in models:
        assert not got[f"{m}:z0"]["fused_loss"] and got[f"{m}:z1"]["fused_loss"]
        for z in (0, 1):
            _dp_train.assert_close_losses(got[f"{m}:z{z}"]["losses"], fp32[m]["losses"], f"{m} PP2 bf16 ZeRO-{z}",
                                          rtol=5e-4)


def test_bf16_resume_at_zero0_is_exact_and_no_load_optim_keeps_the_loaded_weights(tmp_path):
    """Resuming bf16 runs at ZeRO-0. A pipeline (BF16_Optimizer) resumes bit for bit: DeepSpeed saves that
    optimizer's state ZeRO-style but, with ZeRO off, looked for it elsewhere on load (KeyError: 0). Resharded to one
    process it continues too (the reshard reader did not know those files; loading a full checkpoint into bf16 at
    ZeRO-0 wrote neither the fp32 masters nor the Adam state, which that optimizer keys by the masters).
    With --no-load-optim the fp32 master weights are re-derived from the loaded weights: DeepSpeed kept the ones
    from before the load, and the first step wrote them back (the loss jumped from 4.71 to 4.85, near its start)."""
    from deepspeed.accelerator import get_accelerator

    if not get_accelerator().is_bf16_supported():
        pytest.skip("DeepSpeed's accelerator here has no bf16")

    def jobs(tag, extra, resume):
        base = _dp_train.MODELS["sequential"] + ["--bf16", "--train-iters", "8"] + extra
        save = str(tmp_path / tag)
        return [(f"{tag}:full", base), (f"{tag}:first", base + ["--save", save, "--exit-interval", "4"]),
                (f"{tag}:second", base + ["--load", save, "--save", save] + resume)]

    one = run_distributed(_dp_train.run_jobs, 1, jobs("fresh-optim", [], ["--no-load-optim"]), timeout=300)[0]
    full, second = one["fresh-optim:full"]["losses"], one["fresh-optim:second"]["losses"]
    assert one["fresh-optim:second"]["first_iter"] == 5
    # iteration 5's loss is the loaded weights' (before any step); iteration 6 is after the first resumed step: a
    # fresh Adam state moves it a little (0.3% here), stale masters moved it back towards the start (4%)
    assert second[0] == full[4] and abs(second[1] - full[5]) <= 0.01 * full[5], (second, full)
    two = run_distributed(_dp_train.run_jobs, 2, jobs("pp2", ["--pipeline-model-parallel-size", "2"], []),
                          timeout=600)[0]
    assert two["pp2:first"]["losses"] + two["pp2:second"]["losses"] == two["pp2:full"]["losses"]
    # Resharded to one process (weights and Adam state from the bf16_zero_pp_rank_* files), resumed at bf16
    # ZeRO-0 (whose fp32 masters and state the full checkpoint must reach): the PP2 run continues.
    tool = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tools",
                        "reshard_checkpoint.py")
    proc = subprocess.run([sys.executable, tool, "--load", str(tmp_path / "pp2"), "--save", str(tmp_path / "one"),
                           "--pipeline-model-parallel-size", "1", "--iteration", "4"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    base = _dp_train.MODELS["sequential"] + ["--bf16", "--train-iters", "8"]
    one = run_distributed(_dp_train.run_jobs, 1, [("one", base + ["--load", str(tmp_path / "one")])], timeout=300)[0]
    assert one["one"]["first_iter"] == 5
    _dp_train.assert_close_losses(one["one"]["losses"], two["pp2:full"]["losses"][4:], "PP2 bf16 resharded to one "
                                  "process", rtol=2e-4)
