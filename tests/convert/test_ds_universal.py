"""DeepSpeed universal checkpoints: our ZeRO-1 checkpoint goes through DeepSpeed's own ds_to_universal (our saves
carry universal_checkpoint_info), --universal-checkpoint resumes from its output exactly (weights and Adam moments:
the next steps' losses equal the uninterrupted run's), --from ds-universal gives a checkpoint that loads at another
ZeRO stage, and --to ds-universal writes the folder layout DeepSpeed's tool writes, read back equal."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from megatron_code.convert import ds_universal
from megatron_code.testing import free_port
from megatron_code.parallel.universal import tp_dim

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LINE = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--model.vocab_size", "256",
        "--seq-length", "32", "--max-position-embeddings", "32", "--lr", "1e-3", "--mock-data", "--micro-batch-size",
        "2", "--global-batch-size", "4", "--hidden-dropout", "0", "--attention-dropout", "0", "--log-interval", "1",
        "--training.progress_bar", "false", "--eval-interval", "0", "--swiglu", "--train-iters", "4"]


def _run(*args, module: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable] + (["-m"] if module else []) + [args[0] if module else os.path.join(ROOT, args[0])]
    r = subprocess.run(cmd + [str(a) for a in args[1:]], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def _losses(save) -> dict[int, float]:
    return {r["iteration"]: r["loss"] for r in map(json.loads, open(os.path.join(save, "metrics.jsonl")))
            if r["kind"] == "train"}


@pytest.fixture(scope="module")
def universal(tmp_path_factory):
    d = tmp_path_factory.mktemp("univ")
    _run("pretrain_code.py", *LINE, "--zero-stage", "1", "--save-interval", "2", "--save", d / "ref")
    _run("deepspeed.checkpoint.ds_to_universal", "--input_folder", d / "ref" / "iter_0000002", "--output_folder",
         d / "u" / "iter_0000002_universal", module=True)
    return d


def test_resume_from_deepspeeds_universal_output_is_exact(universal, tmp_path):
    ref = _losses(universal / "ref")
    _run("pretrain_code.py", *LINE, "--zero-stage", "1", "--load", universal / "u", "--universal-checkpoint",
         "--save", tmp_path / "run")
    got = _losses(tmp_path / "run")
    assert sorted(got) == [3, 4]
    for it in (3, 4):  # step 4 depends on the Adam moments carried through the universal folder
        assert got[it] == pytest.approx(ref[it], rel=1e-6), it


def test_from_ds_universal_loads_at_another_zero_stage(universal, tmp_path):
    r = _run("tools/convert_checkpoint.py", "--from", "ds-universal", "--load", universal / "u", "--save",
             tmp_path / "ours")
    assert "with Adam moments" in r.stdout
    _run("pretrain_code.py", *LINE, "--zero-stage", "0", "--load", tmp_path / "ours", "--save", tmp_path / "run")
    ref, got = _losses(universal / "ref"), _losses(tmp_path / "run")
    assert got[3] == pytest.approx(ref[3], rel=1e-6) and got[4] == pytest.approx(ref[4], rel=1e-5)


def test_to_ds_universal_round_trip(universal, tmp_path):
    out = tmp_path / "mine" / "iter_0000002_universal"
    _run("tools/convert_checkpoint.py", "--to", "ds-universal", "--load", universal / "ref" / "iter_0000002",
         "--save", out)
    assert (tmp_path / "mine" / "latest_universal").read_text() == "iter_0000002_universal"
    theirs = universal / "u" / "iter_0000002_universal" / "zero"
    mine = out / "zero"
    assert sorted(os.listdir(mine)) == sorted(os.listdir(theirs))  # same parameter folders as DeepSpeed's tool
    for name in os.listdir(theirs):
        if not os.path.isdir(theirs / name):
            continue
        for state in ("fp32", "exp_avg", "exp_avg_sq"):
            a = torch.load(theirs / name / f"{state}.pt", weights_only=False)
            b = torch.load(mine / name / f"{state}.pt", weights_only=False)
            assert torch.equal(a["param"].float(), b["param"]), (name, state)
            assert a.get("cat_dim") == b.get("cat_dim") or tp_dim(name) is None
    job, state = ds_universal.read_ds_universal(str(tmp_path / "mine"))
    assert job is not None and state.client_state["iteration"] == 2 and state.exp_avg is not None


@pytest.mark.slow
def test_tp2_pp2_through_ds_to_universal_resumes_exactly_at_tp1(tmp_path):
    """A TP2 x PP2 ZeRO-1 run -> DeepSpeed's ds_to_universal -> resumed at TP1 x PP1: the same next two losses
    (the first stage's tied embedding is the model's: pipeline_replicated_parameter_patterns)."""
    line = [a for a in LINE if a != "--swiglu"] + ["--num-layers", "4", "--zero-stage", "1"]
    tr = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "4", "--master_addr", "127.0.0.1",
          "--master_port", str(free_port()), os.path.join(ROOT, "pretrain_code.py")]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(tr + line + ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
                                    "--save-interval", "2", "--save", str(tmp_path / "ref")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    _run("deepspeed.checkpoint.ds_to_universal", "--input_folder", tmp_path / "ref" / "iter_0000002",
         "--output_folder", tmp_path / "u" / "iter_0000002_universal", module=True)
    _run("pretrain_code.py", *line, "--load", tmp_path / "u", "--universal-checkpoint", "--save", tmp_path / "run")
    ref, got = _losses(tmp_path / "ref"), _losses(tmp_path / "run")
    assert sorted(got) == [3, 4]
    for it in (3, 4):
        assert got[it] == pytest.approx(ref[it], rel=1e-6), it
