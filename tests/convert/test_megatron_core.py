"""Against Megatron-Core's own code (pip megatron-core, in the test extra), run on CPU by tests/convert/_mcore_peer.py
(which says exactly where their code needs CUDA and what it does about it):

* a checkpoint their GPTModel and their Adam optimizer (one step taken) wrote with their dist_checkpointing
  (Megatron-LM's torch_dist layout), and the same model in the legacy layout, import here with logits equal to their
  forward pass and (torch_dist) Adam moments and step equal to their optimizer's, and the torch_dist import continues
  training from the command line;
* our model and Adam state exported to torch_dist (torch.distributed.checkpoint) and the model to the legacy layout
  load into their GPTModel and optimizer (their dist_checkpointing.load; load_state_dict) with logits equal to ours
  and moments equal to ours."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("megatron.core", reason="megatron-core is not installed: pip install 'megatron_code[test]'")

from megatron_code.convert import megatron_lm as mlm  # noqa: E402
from megatron_code.convert import megatron_torch_dist as mtd  # noqa: E402
from megatron_code.model import GPT  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PEER = os.path.join(ROOT, "tests", "convert", "_mcore_peer.py")


def _env(tmp) -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
             MCORE_PEER_RDZV=str(tmp / "rdzv"))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        e.pop(k, None)
    return e


def _run(tmp, *argv) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, *map(str, argv)], cwd=ROOT, env=_env(tmp), capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


def _our_logits(job, module) -> torch.Tensor:
    sys.path.insert(0, os.path.dirname(PEER))
    try:
        from _mcore_peer import IDS
    finally:
        sys.path.remove(os.path.dirname(PEER))
    model = GPT(job.model)
    model.load_state_dict(module)
    with torch.no_grad():
        return model.eval()(IDS, torch.arange(IDS.shape[1]).expand_as(IDS)).float()


@pytest.fixture(scope="module")
def theirs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mcore")
    _run(tmp, PEER, "build", tmp / "out")
    return tmp / "out"


def test_their_checkpoints_import_with_equal_logits_and_train(theirs, tmp_path):
    their_logits = torch.load(theirs / "logits.pt")
    assert mtd.is_torch_dist(str(theirs / "torch_dist" / "iter_0000010"))
    for kind in ("torch_dist", "legacy"):
        job, state = mlm.read_megatron_lm(str(theirs / kind))
        assert state.client_state["iteration"] == 10 and state.client_state["consumed_samples"] == 40
        assert (job.model.num_kv_heads, job.model.activation, job.model.norm) == (2, "swiglu", "rmsnorm")
        torch.testing.assert_close(_our_logits(job, state.module), their_logits, rtol=1e-5, atol=1e-5)
    moments = torch.load(theirs / "moments.pt")
    job, state = mlm.read_megatron_lm(str(theirs / "torch_dist"))
    assert state.step == 1
    for i, ours in enumerate((state.exp_avg, state.exp_avg_sq)):
        want = mlm.to_ours(job.model, {mlm.canonical(k): v[i] for k, v in moments.items()})
        assert set(ours) == set(want) and all(torch.equal(ours[k], want[k]) for k in want)
    ours = tmp_path / "ours"
    r = _run(tmp_path, "tools/convert_checkpoint.py", "--from", "megatron-lm", "--load", theirs / "torch_dist",
             "--save", ours)
    assert "at iteration 10" in r.stdout
    run = tmp_path / "run"
    _run(tmp_path, "pretrain_code.py", "--config", ours / "iter_0000010" / "config.yaml", "--load", ours,
         "--no-load-optim", "--save", run, "--mock-data", "--train-iters", "12", "--log-interval", "1",
         "--training.progress_bar", "false", "--eval-interval", "0")
    train = {r["iteration"]: r for r in map(json.loads, open(run / "metrics.jsonl")) if r["kind"] == "train"}
    assert sorted(train) == [11, 12] and train[11]["consumed_samples"] == 44  # 40 consumed + one batch of 4
    assert all(0 < r["loss"] < 10 for r in train.values())


def test_our_exports_load_into_their_model_with_equal_logits(theirs, tmp_path):
    job, _ = mlm.read_megatron_lm(str(theirs / "legacy"))  # their model's shape
    model = GPT(job.model)
    model.init_weights(torch.Generator().manual_seed(9))
    sd = model.state_dict()
    ours = _our_logits(job, sd)
    g = torch.Generator().manual_seed(1)
    adam = {"exp_avg": {k: torch.randn(v.shape, generator=g) for k, v in sd.items()},
            "exp_avg_sq": {k: torch.rand(v.shape, generator=g) for k, v in sd.items()}}
    path = mtd.write_torch_dist(job, sd, str(tmp_path / "td"), iteration=3, optim=adam, step=3)
    assert sorted(os.listdir(path)) == [".metadata", "__0_0.distcp", "common.pt", "metadata.json"]
    mlm.write_megatron_lm(job, sd, str(tmp_path / "legacy"), 1, 1, iteration=3)
    legacy = tmp_path / "legacy" / "iter_0000003" / "mp_rank_00" / "model_optim_rng.pt"
    _run(tmp_path, PEER, "load", path, tmp_path / "td.pt", legacy, tmp_path / "legacy.pt")
    for name in ("td", "legacy"):
        torch.testing.assert_close(torch.load(tmp_path / f"{name}.pt"), ours, rtol=1e-5, atol=1e-5)
    moments = torch.load(tmp_path / "td.pt.moments")  # what their optimizer holds after loading our export
    for i, s in enumerate(("exp_avg", "exp_avg_sq")):
        got = mlm.to_ours(job.model, {mlm.canonical(k): v[i] for k, v in moments.items()})
        assert all(torch.equal(got[k], adam[s][k]) for k in adam[s]), s
    # and back: our torch_dist export reads here to the same tensors
    _, back = mlm.read_megatron_lm(str(tmp_path / "td"))
    assert back.step == 3
    for k, v in sd.items():
        assert torch.equal(back.module[k], v) and torch.equal(back.exp_avg[k], adam["exp_avg"][k]), k
