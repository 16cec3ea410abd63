"""Universal checkpoints written for Megatron-DeepSpeed's own models (DeepSpeed's ds_to_universal over a
Megatron-DeepSpeed ZeRO run): GPTModelPipe names, its args and UniversalCheckpointInfo in the copied client state,
TP2-merged tensors as the tool merges them. The folder is assembled here from that documented layout (Megatron-
DeepSpeed cannot be installed here); `--from ds-universal` imports weights and Adam moments exactly, and the run
resumes from it with the moments."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from megatron_code.config.cli import parse_args
from megatron_code.convert import megatron_deepspeed_universal as mdsu
from megatron_code.convert import megatron_lm as mlm
from megatron_code.convert.megatron_deepspeed import _qkv_to_blocks
from megatron_code.model import GPT

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "16",
        "--max-position-embeddings", "16", "--model.vocab_size", "100"]
LLAMA = ["--swiglu", "--normalization", "RMSNorm", "--position-embedding-type", "rope",
         "--untie-embeddings-and-output-weights", "--disable-bias-linear"]
TP = 2


def _write(job, tensors: dict, out, swiglu_info: bool, step: int = 5) -> None:
    """What ds_to_universal writes for a Megatron-DeepSpeed TP2 run whose weights/moments are `tensors` (ours)."""
    cfg = job.model
    for state, sd in tensors.items():
        for key, t in mlm.from_ours(cfg, sd).items():
            if key == "output_layer.weight" and cfg.tie_embeddings:
                continue
            if ".linear_qkv." in key:  # each TP slice [q; k; v] blocks, slices concatenated
                t = torch.cat([_qkv_to_blocks(cfg, c, TP) for c in t.chunk(TP)])
            if ".linear_fc1." in key and cfg.activation == "swiglu" and not swiglu_info:
                gate, up = t.chunk(2)  # slices concatenated as they are: [gate_0; up_0; gate_1; up_1]
                t = torch.cat([torch.cat([g, u]) for g, u in zip(gate.chunk(TP), up.chunk(TP))])
            d = out / "zero" / mdsu.mds_param_name(key, cfg, pipe=True)
            d.mkdir(parents=True, exist_ok=True)
            torch.save({"param": t.clone()}, d / f"{state}.pt")
            torch.save(torch.tensor(float(step)), d / "step.pt")
    info = {"parameter_with_2_sub_params_cat_dim_0": [r"\d+.mlp.dense_h_to_4h.weight"] if swiglu_info else []}
    torch.save({"args": mlm.args_from_job(job, TP, 2, 7, 56), "iteration": 7, "module": None,
                "universal_checkpoint_info": info}, out / "mp_rank_00_model_states.pt")


def _state(job, seed: int) -> dict:
    model = GPT(job.model)
    model.init_weights(torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    return {"fp32": sd, "exp_avg": {k: torch.randn(v.shape, generator=g) for k, v in sd.items()},
            "exp_avg_sq": {k: torch.rand(v.shape, generator=g) for k, v in sd.items()}}


@pytest.mark.parametrize("flags,swiglu_info", [(LLAMA, True), (LLAMA, False), ([], False)],
                         ids=["swiglu-sub-params", "swiglu-slices", "gpt-tied-learned"])
def test_reads_weights_and_adam_moments_exactly(flags, swiglu_info, tmp_path):
    job = parse_args(BASE + flags).job
    tensors = _state(job, 3)
    _write(job, tensors, tmp_path, swiglu_info)
    client = mdsu.client_state(str(tmp_path))
    assert client is not None
    job2, state = mdsu.read_megatron_deepspeed_universal(str(tmp_path), client)
    assert (job2.model.activation, job2.model.tie_embeddings) == (job.model.activation, job.model.tie_embeddings)
    assert state.step == 5 and state.client_state["iteration"] == 7 and state.client_state["consumed_samples"] == 56
    for got, want in ((state.module, tensors["fp32"]), (state.exp_avg, tensors["exp_avg"]),
                      (state.exp_avg_sq, tensors["exp_avg_sq"])):
        assert set(got) == set(want)
        for k in want:
            assert torch.equal(got[k], want[k]), k


def test_cli_imports_with_moments_and_the_run_resumes(tmp_path):
    job = parse_args(BASE + LLAMA).job
    _write(job, _state(job, 4), tmp_path / "uni", swiglu_info=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = lambda *a: subprocess.run([sys.executable, *map(str, a)], cwd=ROOT, env=env, capture_output=True,  # noqa
                                    text=True, timeout=600)
    r = run("tools/convert_checkpoint.py", "--from", "ds-universal", "--load", tmp_path / "uni", "--save",
            tmp_path / "ours")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "with Adam moments" in r.stdout
    assert json.load(open(tmp_path / "ours" / "iter_0000007" / "meta.json"))["has_optimizer"]
    r = run("pretrain_code.py", "--config", tmp_path / "ours" / "iter_0000007" / "config.yaml", "--load",
            tmp_path / "ours", "--save", tmp_path / "run", "--mock-data", "--train-iters", "8", "--log-interval", "1",
            "--training.progress_bar", "false", "--eval-interval", "0", "--global-batch-size", "8",
            "--micro-batch-size", "2", "--tensor-model-parallel-size", "1", "--pipeline-model-parallel-size", "1")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    train = [x for x in map(json.loads, open(tmp_path / "run" / "metrics.jsonl")) if x["kind"] == "train"]
    assert [x["iteration"] for x in train] == [8]
