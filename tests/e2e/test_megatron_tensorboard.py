"""TensorBoard files carry Megatron's tag names and series, read back with TensorBoard's own EventAccumulator;
the log line is Megatron-LM's (its parsers' regexes match), our fields after it; the same run logs to W&B with the
real wandb package, offline by default, under the same names."""

from __future__ import annotations

import glob
import json
import os
import re
import struct
import subprocess
import sys

import pytest

from ._cmd import TINY, run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ITERS, GLOBAL, SEQ = 4, 8, 32


def _scalars(tb_dir: str) -> dict[str, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list] = {}
    for path in glob.glob(f"{tb_dir}/**/events.out.tfevents.*", recursive=True):
        acc = EventAccumulator(path, size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend(acc.Scalars(tag))
    return out


def _wandb_records(run_dir: str) -> list:
    """The records of an offline W&B run (``run-ID.wandb``: wandb's protobuf ``Record``s in LevelDB's log framing
    -- 32 KiB blocks of [crc32c:4][length:2][type:1][payload] -- after a 7-byte header; wandb 0.31 ships no reader
    of its own)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(glob.glob(os.path.join(run_dir, "run-*.wandb"))[0], "rb").read()
    assert data[:4] == b":W&B"
    block, pos, buf, out = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (n == 0 and kind == 0):  # block trailer / zero padding
            pos += left
            continue
        buf, pos = buf + data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):  # a whole record, or the last fragment of one
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def _train(tmp_path, *extra: str):
    tb = str(tmp_path / "tb")
    line = TINY + ["--train-iters", str(ITERS), "--eval-interval", "2", "--eval-iters", "1", "--split", "90,10,0",
                   "--tensorboard-dir", tb, "--log-interval", "2", "--save", str(tmp_path / "ckpt"), *extra]
    proc = run(line, timeout=600)
    return proc, _scalars(tb)


def test_megatron_lm_tags_series_and_log_line(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is not installed: pip install 'megatron_code[test]'")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline must be the default, not the environment's
    proc, sc = _train(tmp_path, "--zero-stage", "1", "--wandb-project", "proj", "--wandb-exp-name", "run1")
    every_iteration = ["lm loss", "learning-rate", "batch-size", "loss-scale", "grad-norm"]
    for tag in every_iteration:
        assert [e.step for e in sc[tag]] == list(range(1, ITERS + 1)), tag
        # "vs samples": the same values against consumed samples
        assert [e.step for e in sc[f"{tag} vs samples"]] == [GLOBAL * i for i in range(1, ITERS + 1)]
        assert [e.value for e in sc[f"{tag} vs samples"]] == [e.value for e in sc[tag]]
    assert all(e.value == GLOBAL for e in sc["batch-size"]) and all(e.value == 1.0 for e in sc["loss-scale"])
    for tag in ("iteration-time", "throughput", "forward-backward-time", "optimizer-time", "batch-generator-time"):
        assert [e.step for e in sc[tag]] == [2, 4] and all(e.value > 0 for e in sc[tag]), tag
    for tag in ("lm loss validation", "lm loss validation vs samples", "lm loss validation ppl",
                "lm loss validation ppl vs samples"):
        assert len(sc[tag]) >= 2, tag
    assert "train/loss" in sc  # our own tags stay as aliases
    # The losses logged under Megatron's names are metrics.jsonl's lm_loss (Megatron's token means; our "loss"
    # beside it is the mean of the micro-batch means, training/reported_loss.py)
    records = [json.loads(x) for x in open(tmp_path / "ckpt" / "metrics.jsonl")]
    train = [r["lm_loss"] for r in records if r["kind"] == "train"]
    assert [e.value for e in sc["lm loss"]] == pytest.approx(train, rel=1e-6)
    valid = [r["lm_loss"] for r in records if r["kind"] == "valid"]
    assert [e.value for e in sc["lm loss validation"]] == pytest.approx(valid, rel=1e-6)
    # Megatron-LM's validation line (evaluate_and_print_results), our loss after it
    shown = re.findall(r" validation loss at iteration (\d+) \| lm loss value: ([\d.E+-]+) \| lm loss PPL: "
                       r"[\d.E+-]+ \| loss: [\d.E+-]+ \|", proc.stdout)
    assert [int(i) for i, _ in shown] == [0, 2, 4]
    assert [float(v) for _, v in shown] == pytest.approx(valid, rel=1e-6)
    # Megatron-LM's log line, as its log parsers read it
    pattern = re.compile(r" \[[\d\- :.]+\] iteration +(\d+)/ +(\d+) \| consumed samples: +(\d+) \| elapsed time per "
                         r"iteration \(ms\): [\d.]+ \| throughput per GPU \(TFLOP/s/GPU\): [\d.]+ \| learning rate: "
                         r"[\d.E+-]+ \| global batch size: +(\d+) \| lm loss: ([\d.E+-]+) \| loss scale: 1\.0 \| grad "
                         r"norm: [\d.]+ \| number of skipped iterations: +0 \| number of nan iterations: +0 \|")
    lines = [m for m in map(pattern.search, proc.stdout.splitlines()) if m]
    assert [(int(m[1]), int(m[2]), int(m[3]), int(m[4])) for m in lines] == [(2, ITERS, 2 * GLOBAL, GLOBAL),
                                                                              (4, ITERS, 4 * GLOBAL, GLOBAL)]
    assert "tokens/s:" in proc.stdout and "MFU:" in proc.stdout
    # (same run) Megatron-LM's tracker file and DeepSpeed's recovery script beside the tag directories; the
    # script consolidates our ZeRO checkpoint as it does DeepSpeed's.
    save = tmp_path / "ckpt"
    assert (save / "latest_checkpointed_iteration.txt").read_text() == str(ITERS)
    assert (save / "latest").read_text().strip() == f"iter_{ITERS:07d}"
    script = save / "zero_to_fp32.py"
    assert script.exists()
    r = subprocess.run([sys.executable, str(script), str(save), str(tmp_path / "fp32")], capture_output=True,
                       text=True, timeout=300, cwd=str(save))
    assert r.returncode == 0, r.stderr[-2000:]
    assert glob.glob(str(tmp_path / "fp32" / "*"))
    # (same run) W&B, offline, under SAVE/wandb: the run's name and config, and per iteration Megatron's names
    runs = glob.glob(str(save / "wandb" / "wandb" / "offline-run-*"))
    assert len(runs) == 1
    records = _wandb_records(runs[0])
    run_rec = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run_rec.project, run_rec.display_name) == ("proj", "run1")
    config = {u.key: json.loads(u.value_json) for u in run_rec.config.update}
    assert config["model"]["num_layers"] > 0
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item} for r in records
               if r.WhichOneof("record_type") == "history"]
    losses = {h["_step"]: h["lm loss"] for h in history if "lm loss" in h}
    assert sorted(losses) == list(range(1, ITERS + 1))
    assert [losses[i] for i in sorted(losses)] == pytest.approx([e.value for e in sc["lm loss"]], rel=1e-6)
    assert any("lm loss validation" in h for h in history)


def test_megatron_deepspeed_tags_with_tokens_series(tmp_path):
    _, sc = _train(tmp_path, "--deepspeed")
    for group, tag in (("lm-loss-training", "lm loss"), ("learning-rate", "learning-rate"),
                       ("grad-norm", "grad-norm"), ("batch-size", "batch-size")):
        assert [e.step for e in sc[f"{group}/{tag}"]] == list(range(1, ITERS + 1))
        assert [e.step for e in sc[f"{group}/{tag} vs tokens"]] == [GLOBAL * SEQ * i for i in range(1, ITERS + 1)]
    assert "lm-loss-validation/lm loss validation vs tokens" in sc
    assert "iteration-time/iteration-time" in sc

def test_fp16_initial_loss_scale_is_megatrons():
    from megatron_code.config.cli import parse_args
    from megatron_code.parallel.engine import deepspeed_config

    job = parse_args(["--preset", "tiny", "--model.vocab_size", "256", "--fp16", "--mock-data"]).job
    job.resolve_batch(1)
    assert deepspeed_config(job, 1)["fp16"]["initial_scale_power"] == 32  # Megatron-LM's --initial-loss-scale 2**32
