"""Pipeline parallelism (DeepSpeed's pipeline engine over our GPT) trains the same model as one process.

The real trainer runs in spawned gloo processes (CPU, fp32, dropout 0, same seed and mock data): 10 steps of loss,
grad norm and validation loss for PP2, PP4, TP2 x PP2 (also with sequence parallelism) and TP2 x PP2 x DP2 with
ZeRO-1 (8 processes) equal the single-process run to 1e-5 relative, for a sequential-block model (learned
positions, tied embedding: the head on the last stage shares the first stage's embedding) and a parallel-block MQA
SwiGLU no-bias RMSNorm model (RoPE, untied head). Also: activation checkpointing (same losses; with dropout on and
TP, the recomputation replays the TP RNG stream so checkpointed and plain runs agree), resume at PP2 and
TP2 x PP2 x DP2, MIM through PP2, and the batch/label translation. Every layout scores the loss with the fused head
+ loss kernel on the last stage (counted), except one PP2 run with it off. Several layouts of one world size share
a spawn.
"""

import json
import math
import os

import pytest
import torch

from megatron_code.testing import run_distributed

pytestmark = pytest.mark.distributed

ITERS = 10
BASE = ["--model.vocab_size", "96", "--model.num_layers", "4", "--model.hidden_size", "32",
        "--model.num_attention_heads", "4", "--model.ffn_hidden_size", "64", "--model.max_position_embeddings", "32",
        "--seq-length", "16", "--mock-data", "--micro-batch-size", "2", "--global-batch-size", "8",
        # every dropout off (a bare command line starts from Megatron's defaults: 0.1 each)
        "--hidden-dropout", "0", "--attention-dropout", "0", "--model.embedding_dropout", "0",
        "--train-iters", str(ITERS), "--log-interval", "100", "--lr", "1e-2", "--lr-warmup-iters", "2",
        "--clip-grad", "0.5", "--training.progress_bar", "false", "--eval-interval", "5", "--eval-iters", "1",
        "--seed", "3"]
MODELS = {
    "sequential_tied": ["--model.block", "sequential", "--model.position_embedding", "learned",
                        "--model.norm", "layernorm", "--model.activation", "gelu"],
    "parallel_mqa_swiglu": ["--model.block", "parallel", "--model.position_embedding", "rope",
                            "--model.num_kv_heads", "1", "--model.activation", "swiglu", "--model.norm", "rmsnorm",
                            "--model.bias", "false", "--untie-embeddings-and-output-weights"],
}
PP2, PP4 = ["--pipeline-model-parallel-size", "2"], ["--pipeline-model-parallel-size", "4"]
TP2 = ["--tensor-model-parallel-size", "2"]


def _train(args):
    """Run the trainer; returns {"loss": [...], "grad_norm": [...], "valid": [...], "fused_calls": n} identical on
    every rank (n: calls of the fused head + loss kernel on the busiest rank, i.e. a last stage)."""
    import torch.distributed as dist

    import megatron_code.model.gpt as gpt
    from megatron_code.config.cli import parse_args
    from megatron_code.training.trainer import Trainer

    calls = []
    kernel = gpt.linear_cross_entropy
    gpt.linear_cross_entropy = lambda *a, **k: calls.append(1) or kernel(*a, **k)
    try:
        trainer = Trainer(parse_args(args).job)
        norms, parts, step = [], [], trainer.train_step

        def recording_step(batches):
            loss = step(batches)
            norms.append(trainer.grad_norm)
            parts.append(dict(trainer.loss_parts))
            return loss

        trainer.train_step = recording_step
        history = trainer.train()
    finally:
        gpt.linear_cross_entropy = kernel
    n = torch.tensor(len(calls))
    dist.all_reduce(n, op=dist.ReduceOp.MAX)
    return {"loss": [v for _, v in history["train_loss"]], "grad_norm": norms, "parts": parts,
            "valid": [v for _, v in history["valid_loss"]], "fused_calls": int(n)}


def _runs(rank, world, runs):
    """Several trainer runs one after another in the same process group (one spawn for many layouts)."""
    return {name: _train(args) for name, args in runs.items()}


def _same_on_all_ranks(results):
    for r in results[1:]:
        assert r == results[0], "ranks report different losses"
    return results[0]


def _close(got, want, what, rtol=1e-5):
    assert len(got) == len(want), f"{what}: {len(got)} values vs {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        assert math.isfinite(g), f"{what}[{i}] = {g}"
        assert abs(g - w) <= rtol * abs(w), f"{what}[{i}]: {g} vs single process {w} (rel {abs(g - w) / abs(w):.2e})"


def _check(run, ref, what, dp=1):
    # the fused head + loss ran on the last stage for every micro batch (DP ranks split them)
    assert run["fused_calls"] * dp == ref["fused_calls"] > 0, (what, run["fused_calls"], ref["fused_calls"])
    _close(run["loss"], ref["loss"], f"{what} train loss")
    _close(run["grad_norm"], ref["grad_norm"], f"{what} grad norm")
    _close(run["valid"], ref["valid"], f"{what} validation loss")


@pytest.fixture(scope="module")
def reference():
    out = _same_on_all_ranks(run_distributed(_runs, 1, {m: BASE + a for m, a in MODELS.items()}, timeout=300))
    for m, r in out.items():
        assert len(r["loss"]) == ITERS and len(r["valid"]) == 3, m  # valid at iterations 0, 5, 10
        assert r["loss"][-1] < r["loss"][0], f"{m}: the reference does not learn"
        assert all(0 < g < float("inf") for g in r["grad_norm"])
    return out


def test_pp2_matches_single_process_and_resumes(reference, tmp_path):
    first, resumed = str(tmp_path / "first"), str(tmp_path / "resumed")
    runs = {m: BASE + a + PP2 for m, a in MODELS.items()}
    # The tied model saves at 5 (the head on stage 1 shares stage 0's embedding: only stage 0 writes it).
    runs["sequential_tied"] += ["--save", first, "--save-interval", "5"]
    runs["resumed"] = BASE + MODELS["sequential_tied"] + PP2 + ["--load", os.path.join(first, "iter_0000005"),
                                                                "--save", resumed]
    # Activation checkpointing every layer and the uniform partition: still the same losses.
    runs["ckpt"] = BASE + MODELS["sequential_tied"] + PP2 + ["--checkpoint-activations",
                                                             "--parallel.pipeline_partition", "uniform"]
    # The unfused head: the last pipeline layer computes logits and the loss scores them.
    runs["unfused"] = BASE + MODELS["sequential_tied"] + PP2 + ["--training.fused_lm_loss", "false"]
    out = _same_on_all_ranks(run_distributed(_runs, 2, runs, timeout=300))
    for m in MODELS:
        _check(out[m], reference[m], f"PP2 {m}")
    _check(out["ckpt"], reference["sequential_tied"], "PP2 checkpointed")
    assert out["unfused"]["fused_calls"] == 0
    _check(dict(out["unfused"], fused_calls=reference["sequential_tied"]["fused_calls"]), reference["sequential_tied"],
           "PP2 unfused head")
    assert out["resumed"]["loss"] == out["sequential_tied"]["loss"][5:]
    assert out["resumed"]["grad_norm"] == out["sequential_tied"]["grad_norm"][5:]


def test_pp4_tp2_pp2_and_sp_match_single_process(reference):
    runs = {}
    for m, a in MODELS.items():
        runs[f"pp4 {m}"] = BASE + a + PP4 + ["--parallel.pipeline_partition", "uniform"]
        runs[f"tp2pp2 {m}"] = BASE + a + TP2 + PP2
    # Sequence parallelism: stages exchange sequence shards (DeepSpeed's TP-partitioned sends must be off).
    runs["tp2pp2 sp"] = BASE + MODELS["parallel_mqa_swiglu"] + TP2 + PP2 + ["--sequence-parallel"]
    # Dropout on, TP2 x PP2: checkpointed recomputation must replay both RNG streams (default and the TP
    # tracker's), so the run equals the plain one exactly.
    drop = BASE + MODELS["parallel_mqa_swiglu"] + TP2 + PP2 + ["--hidden-dropout", "0.2", "--attention-dropout",
                                                               "0.2", "--train-iters", "4", "--eval-interval", "0"]
    runs["dropout"] = drop
    runs["dropout ckpt"] = drop + ["--checkpoint-activations", "--checkpoint-num-layers", "2"]
    out = _same_on_all_ranks(run_distributed(_runs, 4, runs, timeout=400))
    for m in MODELS:
        _check(out[f"pp4 {m}"], reference[m], f"PP4 {m}")
        _check(out[f"tp2pp2 {m}"], reference[m], f"TP2xPP2 {m}")
    _check(out["tp2pp2 sp"], reference["parallel_mqa_swiglu"], "TP2xPP2 sequence parallel")
    assert out["dropout ckpt"]["loss"] == out["dropout"]["loss"]
    assert out["dropout"]["loss"] != reference["parallel_mqa_swiglu"]["loss"][:4]  # dropout was really on


def test_tp2_pp2_dp2_zero1_and_resume(reference, tmp_path):
    layout = TP2 + PP2 + ["--zero-stage", "1"]
    first, resumed = str(tmp_path / "first"), str(tmp_path / "resumed")
    runs = {m: BASE + a + layout for m, a in MODELS.items()}
    model = MODELS["parallel_mqa_swiglu"]
    runs["parallel_mqa_swiglu"] += ["--save", first, "--save-interval", "5"]  # the uninterrupted run
    runs["resumed"] = BASE + model + layout + ["--load", os.path.join(first, "iter_0000005"), "--save", resumed]
    out = _same_on_all_ranks(run_distributed(_runs, 8, runs, timeout=600))
    for m in MODELS:
        _check(out[m], reference[m], f"TP2xPP2xDP2 ZeRO-1 {m}", dp=2)
    out["first"] = out["parallel_mqa_swiglu"]
    # Resumed at iteration 5 from the TP2 x PP2 x DP2 checkpoint: iterations 6..10 continue exactly.
    assert out["resumed"]["loss"] == out["first"]["loss"][5:]
    assert out["resumed"]["grad_norm"] == out["first"]["grad_norm"][5:]
    with open(os.path.join(first, "iter_0000005", "meta.json")) as f:
        layout = json.load(f)["layout"]
    parts = layout.pop("pipeline_parts")  # the stage boundaries over the 7 pipeline layers, for resharding
    assert layout == {"tp": 2, "pp": 2, "dp": 2, "zero": 1}
    assert len(parts) == 3 and parts[0] == 0 < parts[1] < parts[2] == 7, parts
    files = os.listdir(os.path.join(first, "iter_0000005"))
    # DeepSpeed's per-layer files: embedding, 4 blocks, final norm, head, each for TP ranks 0 and 1.
    assert sum(f.startswith("layer_") and f.endswith("-model_states.pt") for f in files) == 7 * 2
    # ... whose keys are the GPT's own: one state dict per TP rank, this rank's shards.
    from megatron_code.config.cli import parse_args
    from megatron_code.model import GPT
    from megatron_code.parallel.pipeline import pipeline_model_states

    with torch.device("meta"):
        full = GPT(parse_args(BASE + model).job.model).state_dict()
    shards = pipeline_model_states(os.path.join(first, "iter_0000005"))
    assert len(shards) == 2 and all(set(s) == set(full) for s in shards)
    assert shards[0]["layers.0.attn.q_proj.weight"].shape[0] * 2 == full["layers.0.attn.q_proj.weight"].shape[0]
    assert not torch.equal(shards[0]["lm_head.weight"], shards[1]["lm_head.weight"])  # two vocabulary halves
    from megatron_code.parallel.pipeline import gpt_keys_of_layer

    for f in files:
        if f.startswith("layer_") and f.endswith("-model_states.pt"):
            prefix = gpt_keys_of_layer(4, int(f[6:8]), tied=False)
            keys = torch.load(os.path.join(first, "iter_0000005", f), weights_only=True)
            assert keys and all(k.startswith(prefix + ".") for k in keys), (f, prefix, list(keys))


def test_mim_objective_through_the_pipeline(tmp_path):
    """MIM's doubled batch and its four-tensor label slot reach the last stage; its three logged loss terms come
    back averaged over micro batches on every stage, equal to the single-process values."""
    from megatron_code.data.tokenizer import train_code_tokenizer

    texts = [f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(200)]
    train_code_tokenizer(texts, 300, str(tmp_path / "tok"))
    args = [a for a in BASE if a not in ("--model.vocab_size", "96")] + MODELS["parallel_mqa_swiglu"] + [
        "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(tmp_path / "tok"), "--mim",
        "--mim-beta", "0.5", "--train-iters", "4", "--eval-interval", "2"]
    ref = run_distributed(_runs, 1, {"mim": args}, timeout=300)[0]["mim"]
    out = _same_on_all_ranks(run_distributed(_runs, 2, {"mim": args + PP2}, timeout=300))["mim"]
    _check(out, ref, "MIM PP2")
    assert set(ref["parts"][0]) == {"fwd_ce", "bwd_ce", "agreement"}
    for got, want in zip(out["parts"], ref["parts"]):
        for k in want:
            _close([got[k]], [want[k]], f"MIM PP2 {k}")


# ----------------------------------------------------------------------------- no process group needed
def test_pipeline_batch_translation_roundtrip():
    from megatron_code.data.batch import make_batch
    from megatron_code.data.objectives.mim import mim_batch
    from megatron_code.parallel.pipeline import batch_from_labels, to_pipeline_batch
    from megatron_code.training.objective import MIMObjective

    tokens = torch.randint(0, 50, (3, 9), generator=torch.Generator().manual_seed(0))
    causal = make_batch(tokens, eod=0, reset_position_ids=True)
    (ids, pos), labels = to_pipeline_batch(causal)
    assert ids is causal["input_ids"] and pos is causal["position_ids"]
    back = batch_from_labels(list(labels))  # DataLoader-style list: accepted
    assert set(back) == {"labels", "loss_mask"} and back["labels"] is causal["labels"]
    mim = mim_batch(tokens, None, l2r_id=60, r2l_id=61, pad_id=62, eod_id=0)
    keys = MIMObjective.TRAIN_LABELS  # the entries the MIM objective's training loss reads
    (ids, _), labels = to_pipeline_batch(mim, keys)
    assert ids.shape == (6, 8) and all(torch.is_tensor(t) for t in labels)
    back = batch_from_labels(labels, keys)
    for k in ("labels", "loss_mask", "agree_mask", "align_index"):
        assert torch.equal(back[k], mim[k]), k
    with pytest.raises(ValueError, match="label tensors"):
        batch_from_labels(labels)  # four tensors for the two next-token keys


def test_bad_partition_method_is_a_clear_error():
    from megatron_code.config.model import ModelConfig
    from megatron_code.model import GPT
    from megatron_code.parallel.groups import ParallelGroups, RankGrid
    from megatron_code.parallel.pipeline import PipelineConfigError, build_pipeline

    model = GPT(ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=64))
    groups = ParallelGroups(grid=RankGrid(tp=1, pp=2, dp=1))
    with pytest.raises(PipelineConfigError, match="uniform"):
        build_pipeline(model, groups, loss_fn=None, partition_method="balanced")
    groups = ParallelGroups(grid=RankGrid(tp=1, pp=6, dp=1))
    with pytest.raises(PipelineConfigError, match="fewer stages"):
        build_pipeline(model, groups, loss_fn=None)
