"""Recipe features from the command line: the study's `auto` rules and PaLM's Adafactor in a real run."""

import json
import os
import sys
import sysconfig

import pytest

from megatron_code.testing import free_port

from ._cmd import TINY, run, train_losses

pytestmark = pytest.mark.e2e


def test_auto_rules_are_printed_and_used(tmp_path):
    save = str(tmp_path / "run")
    out = run(TINY + ["--train-iters", "3", "--lr", "auto", "--lr-warmup-iters", "auto", "--weight-decay", "auto",
                      "--lr-decay-style", "constant", "--save", save])
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("--lr auto = ")][0]
    lr = float(line.split()[3])
    assert "--lr-warmup-iters auto = 40 = 2 / (1 - beta2) with beta2 = 0.95" in out.stdout
    assert "--weight-decay auto = 1.6667e+03" in out.stdout  # K / N_batches = 5000 / 3 (constant batch)
    with open(os.path.join(save, "metrics.jsonl")) as f:
        lrs = [json.loads(r)["lr"] for r in f if json.loads(r)["kind"] == "train"]
    assert lrs == pytest.approx([lr * k / 40 for k in (1, 2, 3)], rel=1e-4)  # warmup toward lr auto (printed to 5 digits)


def test_adafactor_trains_and_zero3_is_refused_in_one_line(tmp_path):
    save = str(tmp_path / "run")
    run(TINY + ["--train-iters", "3", "--optimizer", "adafactor", "--lr", "1e-2", "--lr-warmup-init", "1e-2",
                "--lr-decay-style", "inverse-square-root", "--optim.weight_decay_lr_power", "2", "--bf16",
                "--save", save])
    assert sorted(train_losses(save)) == [1, 2, 3]
    bad = run(TINY + ["--train-iters", "3", "--optimizer", "adafactor", "--zero-stage", "3"], check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "use --zero-stage 1 or 2" in bad.stderr.strip().splitlines()[-1]


def test_z_loss_is_logged_and_equal_on_the_fused_and_unfused_paths(tmp_path):
    runs = {}
    for fused in ("true", "false"):
        save = str(tmp_path / fused)
        run(TINY + ["--train-iters", "2", "--z-loss", "1e-2", "--training.fused_lm_loss", fused, "--save", save])
        with open(os.path.join(save, "metrics.jsonl")) as f:
            runs[fused] = [json.loads(r) for r in f if json.loads(r)["kind"] == "train"]
    for a, b in zip(runs["true"], runs["false"]):
        assert a["z_loss"] > 0 and a["z_loss"] == pytest.approx(b["z_loss"], rel=1e-5)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_fp16_preset_falls_back_to_bf16_with_a_note_where_fp16_is_missing(tmp_path):
    """phi-1 and JuPyT5 trained in fp16; their presets set training.fp16_fallback_bf16. Where the accelerator has
    fp16 the run stays fp16 (nothing to check here); otherwise it trains in bf16 after one note line."""
    from megatron_code.parallel.engine import check_precision_supported
    try:
        check_precision_supported("fp16")
        pytest.skip("this machine's accelerator has fp16: no fallback happens")
    except ValueError:
        pass
    out = run(TINY + ["--train-iters", "1", "--fp16", "--training.fp16_fallback_bf16", "true"])
    notes = [ln for ln in out.stdout.splitlines() if "running in bf16" in ln]
    assert len(notes) == 1 and "preset trained in fp16" in notes[0]
    refused = run(TINY + ["--train-iters", "1", "--fp16"], check=False)
    assert refused.returncode == 2 and "no fp16 on this machine" in refused.stderr


def _torchrun() -> list[str]:
    port = free_port()  # docs/testing.md rule 1: a port of this worker's slice, not the kernel's ephemeral range
    tr = os.path.join(sysconfig.get_path("scripts"), "torchrun")
    return ([sys.executable, tr] if os.path.exists(tr) else [sys.executable, "-m", "torch.distributed.run"]) + [
        "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port)]


def test_adafactor_at_zero1_steps_like_zero0(tmp_path):
    """DP2: at ZeRO-1 Adafactor steps DeepSpeed's flat partitions with the tensor boundaries the trainer hands it;
    the losses equal ZeRO-0's (whole tensors) bitwise (fp32, no dropout)."""
    args = TINY + ["--train-iters", "4", "--optimizer", "adafactor", "--lr", "1e-2", "--hidden-dropout", "0",
                   "--attention-dropout", "0"]
    losses = {}
    for z in ("0", "1"):
        save = str(tmp_path / f"z{z}")
        run(args + ["--zero-stage", z, "--save", save], launcher=_torchrun())
        losses[z] = train_losses(save)
    assert sorted(losses["0"]) == [1, 2, 3, 4] and losses["1"] == losses["0"]
