"""Megatron-LM legacy checkpoints (--ckpt-format torch) <-> ours: round trips at TP1 x PP1 and TP2 x PP2 with equal
weights; the committed checkpoint of Megatron-LM's own GPTModel (tests/fixtures/megatron_lm_ckpt) imports; a run
exported to Megatron-LM and imported back continues with the same loss at the next step. Megatron-Core's own code
(logits both ways, torch_dist, training after import) is run in tests/convert/test_megatron_core.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from megatron_code.config.cli import parse_args
from megatron_code.convert import megatron_lm as mlm
from megatron_code.model import GPT

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "megatron_lm_ckpt")
BASE = ["--num-layers", "4", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "32",
        "--max-position-embeddings", "32", "--model.vocab_size", "100"]
LLAMA = ["--swiglu", "--group-query-attention", "--num-query-groups", "2", "--normalization", "RMSNorm",
         "--position-embedding-type", "rope", "--untie-embeddings-and-output-weights", "--disable-bias-linear"]
PARTIAL_ROPE = ["--rotary-percent", "0.5"]  # phi-1 style: a part of each head rotates (saved as args.rotary_percent)


def _env() -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(k, None)
    return e


def _run(script: str, *args) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


@pytest.mark.parametrize("flags", [LLAMA + PARTIAL_ROPE, []],
                         ids=["gqa-swiglu-rmsnorm-partial-rope-untied", "gpt-gelu-learned-tied"])
@pytest.mark.parametrize("tp,pp,extra", [(1, 1, []), (2, 2, []), (2, 2, ["--bf16"]), (1, 2, ["--bf16"])])
def test_round_trip_equal_weights(flags, tp, pp, extra, tmp_path):
    """Weights, Adam moments and step, and the CPU RNG states come back exactly; bf16 runs through the fp32 masters
    of Float16OptimizerWithFloat16Params, and (TP1 x PP2) through the distributed optimizer's distrib_optim.pt."""
    job = parse_args(BASE + flags + extra).job
    model = GPT(job.model)
    model.init_weights(torch.Generator().manual_seed(0))
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    adam = {"exp_avg": {k: torch.randn(v.shape, generator=g) for k, v in sd.items()},
            "exp_avg_sq": {k: torch.rand(v.shape, generator=g) for k, v in sd.items()}}
    torch.manual_seed(11)
    from megatron_code.training.checkpoint import rng_state
    rng = rng_state()
    distributed = (tp, pp) == (1, 2)
    mlm.write_megatron_lm(job, sd, str(tmp_path / "m"), tp, pp, iteration=7, consumed=56, optim=adam, step=7,
                          client_state={"rng": rng}, distributed_optimizer=distributed)
    rank_dir = tmp_path / "m" / "iter_0000007" / ("mp_rank_00" if pp == 1 else "mp_rank_00_000")
    assert (rank_dir / "distrib_optim.pt").exists() == distributed
    names = sorted(os.listdir(tmp_path / "m" / "iter_0000007"))
    assert names == ([f"mp_rank_{r:02d}" for r in range(tp)] if pp == 1 else
                     [f"mp_rank_{r:02d}_{s:03d}" for r in range(tp) for s in range(pp)])
    assert (tmp_path / "m" / "latest_checkpointed_iteration.txt").read_text() == "7"
    job2, state = mlm.read_megatron_lm(str(tmp_path / "m"))
    assert set(state.module) == set(sd) == set(state.exp_avg) == set(state.exp_avg_sq)
    for k, v in sd.items():
        assert torch.equal(state.module[k], v.float()), k
        assert torch.equal(state.exp_avg[k], adam["exp_avg"][k]) and torch.equal(state.exp_avg_sq[k],
                                                                                  adam["exp_avg_sq"][k]), k
    assert state.step == 7
    back = state.client_state["rng"]
    assert back["python"] == rng["python"] and torch.equal(back["torch"], rng["torch"])
    assert all((a == b).all() if hasattr(a, "all") else a == b for a, b in zip(back["numpy"], rng["numpy"]))
    assert state.client_state["iteration"] == 7 and state.client_state["consumed_samples"] == 56
    assert (job2.parallel.tensor_parallel, job2.parallel.pipeline_parallel) == (tp, pp)
    for f in ("num_layers", "hidden_size", "num_attention_heads", "activation", "norm", "position_embedding",
              "rotary_dims", "tie_embeddings", "bias"):
        assert getattr(job2.model, f) == getattr(job.model, f), f
    assert job2.model.padded_vocab_size == job.model.padded_vocab_size
    # the layout Megatron-LM reads: per TP shard, fused QKV per query group [q.., k, v]; SwiGLU fc1 [gate; up]
    shard = torch.load(tmp_path / "m" / "iter_0000007" / ("mp_rank_00" if pp == 1 else "mp_rank_00_000") /
                       "model_optim_rng.pt", weights_only=False)
    qkv = shard["model"]["decoder.layers.0.self_attention.linear_qkv.weight"]
    groups = job.model.num_kv_heads
    qpg, d = job.model.num_attention_heads // groups, 16
    first = qkv.reshape(groups // tp, qpg + 2, d, 64)[0]
    assert qkv.dtype == (torch.bfloat16 if extra else torch.float32)  # the run's precision, as Megatron saves it
    assert torch.equal(first[:qpg].reshape(-1, 64), sd["layers.0.attn.q_proj.weight"][:qpg * d].to(qkv.dtype))
    assert torch.equal(first[qpg], sd["layers.0.attn.k_proj.weight"][:d].to(qkv.dtype))
    assert shard["args"].tensor_model_parallel_size == tp and shard["checkpoint_version"] == 3.0


def test_megatron_lm_model_checkpoint_imports(tmp_path):
    ours = tmp_path / "ours"
    r = _run("tools/convert_checkpoint.py", "--from", "megatron-lm", "--load", os.path.join(FIXTURE, "ckpt"),
             "--save", ours)
    assert "at iteration 10" in r.stdout
    their = torch.load(os.path.join(FIXTURE, "ckpt", "iter_0000010", "mp_rank_00", "model_optim_rng.pt"),
                       weights_only=False)["model"]
    state = torch.load(ours / "iter_0000010" / "full_state.pt", weights_only=False)["module"]
    qkv = their["decoder.layers.1.self_attention.linear_qkv.weight"].reshape(2, 4, 8, 32)  # 2 groups [q q k v]
    assert torch.equal(state["layers.1.attn.v_proj.weight"], qkv[:, 3].reshape(16, 32))
    assert torch.equal(state["layers.0.mlp.up_proj.weight"], their["decoder.layers.0.mlp.linear_fc1.weight"][64:])
    assert torch.equal(state["lm_head.weight"], their["output_layer.weight"])


@pytest.mark.parametrize("fmt,layout", [
    ("megatron-lm", ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"]),
    ("megatron-deepspeed", ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"])])
def test_exported_run_continues_with_the_same_loss_at_the_next_step(fmt, layout, tmp_path):
    """megatron-lm: ours at iteration 2 -> legacy TP2 x PP2 (Adam state and RNG) -> ours -> torch_dist -> ours
    (conversions in this process), then resumed: the moments and step come back exactly (and the RNG states through
    the legacy files) and iterations 3-5 have the uninterrupted run's losses. megatron-deepspeed: ours -> TP2 x PP2
    weights + global_step2_universal (Adam state, CPU RNG) -> ours, the same checks."""
    from megatron_code.commands.convert_checkpoint import main as convert
    from megatron_code.parallel.reshard import read_full_state

    line = ["--num-layers", "4", "--hidden-size", "64", "--num-attention-heads", "4", "--model.vocab_size", "256",
            "--seq-length", "32", "--max-position-embeddings", "32", "--lr", "1e-3", "--swiglu",
            "--normalization", "RMSNorm", "--mock-data", "--micro-batch-size", "2",
            "--global-batch-size", "4", "--hidden-dropout", "0", "--attention-dropout", "0", "--log-interval", "1",
            "--training.progress_bar", "false", "--eval-interval", "0"]
    # both Megatron-LM formats hold the Adam state, and so does a Megatron-DeepSpeed export (its
    # global_step2_universal, read back by --from megatron-deepspeed): the steps after it follow too
    iters = "5"
    ref = tmp_path / "ref"
    _run("pretrain_code.py", *line, "--train-iters", iters, "--save-interval", "2", "--save", ref)
    ref_loss = {r["iteration"]: r["loss"] for r in map(json.loads, open(ref / "metrics.jsonl")) if r["kind"] == "train"}
    for later in range(3, int(iters) + 1):  # make iteration 2 the one to convert
        if (ref / f"iter_{later:07d}" / "meta.json").exists():
            os.remove(ref / f"iter_{later:07d}" / "meta.json")
    (ref / "latest").write_text("iter_0000002")
    chain = [tuple(layout), ("--ckpt-format", "torch_dist")] if fmt == "megatron-lm" else [tuple(layout)]
    src = ref
    for i, how in enumerate(chain):
        assert convert(["--to", fmt, "--load", str(src), "--save", str(tmp_path / f"out{i}"), *how]) == 0
        assert convert(["--from", fmt, "--load", str(tmp_path / f"out{i}"), "--save", str(tmp_path / f"back{i}")]) == 0
        src = tmp_path / f"back{i}"
    # Adam moments and step exactly those of the run (saved at ZeRO-0 by name, read back by name)
    from megatron_code.config.job import JobConfig
    job = JobConfig.load(str(ref / "iter_0000002" / "config.yaml"))
    from megatron_code.training.optimizer import param_groups
    with torch.device("meta"):
        m = GPT(job.model)
    names = {id(p): n for n, p in m.named_parameters()}
    order = [names[id(p)] for g in param_groups(m, job.optim.weight_decay) for p in g["params"]]
    before = read_full_state(str(ref / "iter_0000002"), job, opt_order=order)
    after = read_full_state(str(src / "iter_0000002"), job)
    assert after.step == before.step == 2
    for k in before.exp_avg:
        assert torch.equal(after.exp_avg[k], before.exp_avg[k]) and torch.equal(after.exp_avg_sq[k],
                                                                                before.exp_avg_sq[k]), k
    legacy = read_full_state(str(tmp_path / "back0" / "iter_0000002"), job).client_state["rng"]
    assert torch.equal(legacy["torch"], before.client_state["rng"]["torch"])
    assert legacy["python"] == before.client_state["rng"]["python"]
    run = tmp_path / "run"
    _run("pretrain_code.py", *line, "--train-iters", iters, "--load", src, "--save", run)
    loss = {r["iteration"]: r["loss"] for r in map(json.loads, open(run / "metrics.jsonl")) if r["kind"] == "train"}
    assert sorted(loss) == list(range(3, int(iters) + 1))
    for i in loss:  # iterations 3-5: a fresh optimizer would differ from 4 on
        assert loss[i] == pytest.approx(ref_loss[i], rel=1e-5, abs=1e-6), i


def test_layernorm_1p_checkpoint_imports_zero_centred(tmp_path):
    """Megatron's --apply-layernorm-1p stores gain - 1: the import keeps it (a zero-centred model, exact), and its
    ordinary gains (what an HF export writes) are the original ones."""
    from megatron_code.convert.hf import ordinary_norm_gains
    job = parse_args(BASE).job
    model = GPT(job.model)
    model.init_weights(torch.Generator().manual_seed(3))
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    mlm.write_megatron_lm(job, sd, str(tmp_path / "m"), 1, 1, iteration=1)
    path = tmp_path / "m" / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt"
    ck = torch.load(path, weights_only=False)
    ck["args"].apply_layernorm_1p = True
    for k in ck["model"]:
        if k.endswith("layernorm.weight"):
            ck["model"][k] = ck["model"][k] - 1.0
    torch.save(ck, path)
    job2, state = mlm.read_megatron_lm(str(tmp_path / "m"))
    assert job2.model.norm_zero_centered and torch.equal(state.module["final_norm.weight"],
                                                         sd["final_norm.weight"] - 1.0)
    _, plain = ordinary_norm_gains(job2.model, state.module)
    for k, v in sd.items():
        assert torch.allclose(plain[k], v.float(), atol=1e-6), k
