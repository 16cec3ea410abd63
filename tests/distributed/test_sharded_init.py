"""Tensor/pipeline-parallel models are built without ever holding the full model on one rank (trainer.build_model:
meta GPT -> TP plan on meta -> this rank's shards of this rank's stage materialised from per-module seeds), and
every rank's parameters are BITWISE the corresponding slice of the single-process init
(`GPT(cfg).init_weights(Generator().manual_seed(seed))`), for TP2, PP2 and TP2 x PP2 on a parallel-block MQA SwiGLU
bias-free tied model and a sequential GELU learned-position untied model (also at TP 2 and 4 on virtual ranks,
through both materialize_gpt_params and to_empty + init_weights). The peak RSS growth of a TP2 x PP2 build
stays far below the full model's size (the old full-build-then-shard path grew by more than the full model), and a
PaLM-540B layout (TP8 x PP12) is still planned on meta only.
"""

import os
import resource
import subprocess
import sys

import pytest
import torch

from megatron_code.testing import run_distributed

pytestmark = pytest.mark.distributed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEED = 11
BASE = ["--model.vocab_size", "90", "--model.num_layers", "4", "--model.hidden_size", "32",
        "--model.num_attention_heads", "4", "--model.ffn_hidden_size", "64", "--model.max_position_embeddings", "32",
        "--seq-length", "16", "--mock-data", "--micro-batch-size", "2", "--global-batch-size", "4",
        "--seed", str(SEED)]
MODELS = {
    # padded vocab 128 (pad multiple 128 is Megatron's default): the padding rows are drawn and sharded too
    "parallel_mqa_swiglu_nobias_tied": ["--model.block", "parallel", "--model.position_embedding", "rope",
                                        "--model.num_kv_heads", "1", "--model.activation", "swiglu",
                                        "--model.norm", "rmsnorm", "--model.bias", "false"],
    "sequential_gelu_learned_untied": ["--model.block", "sequential", "--model.position_embedding", "learned",
                                       "--model.norm", "layernorm", "--model.activation", "gelu",
                                       "--untie-embeddings-and-output-weights"],
}


def _job(args):
    from megatron_code.config.cli import parse_args
    from megatron_code.training.trainer import resolve_tokenizer

    job = parse_args(args).job
    resolve_tokenizer(job)
    job.validate()
    return job


def _stage_parameters(pipe) -> dict:
    """{GPT parameter name: tensor} of a pipeline stage (its layers keep the GPT's module paths)."""
    out = {}
    for name, child in pipe.named_children():
        for layer in (child.values() if name == "tied_modules" else [child]):
            out.update(dict(layer.named_parameters()))
    return out


def _build_rank(job, tp, pp):
    """This rank's parameters {GPT name: tensor} as the trainer builds them, and the GPT object it started from."""
    from megatron_code.parallel.groups import ParallelGroups
    from megatron_code.parallel.pipeline import build_pipeline
    from megatron_code.training.trainer import build_model

    groups = ParallelGroups.build(tp, pp)
    model = build_model(job, groups)
    if pp == 1:
        return groups, dict(model.named_parameters()), model
    pipe = build_pipeline(model, groups, lambda logits, batch, train: (logits.sum(), {}), seed=job.training.seed)
    return groups, _stage_parameters(pipe), model


def _check_layouts(rank, world, layouts):
    """For each (model, tp, pp): compare this rank's parameters with its slice of the single-process init."""
    from megatron_code.model import GPT

    report = {}
    for key, (model_name, tp, pp) in layouts.items():
        job = _job(BASE + MODELS[model_name] + ["--tensor-model-parallel-size", str(tp),
                                                "--pipeline-model-parallel-size", str(pp)])
        groups, params, gpt = _build_rank(job, tp, pp)
        ref = GPT(job.model)
        ref.init_weights(torch.Generator().manual_seed(SEED))
        full = dict(ref.named_parameters())
        for name, p in params.items():
            assert p.device.type == "cpu", f"{key}: {name} not materialised"
            dim = getattr(p, "partition_dim", None)
            want = full[name] if dim is None else full[name].chunk(tp, dim=dim)[groups.tp_rank]
            assert torch.equal(p.detach(), want.detach()), f"{key} rank {rank}: {name} differs from the reference"
        # only this stage was created: the rest of the GPT stayed on meta
        real = sum(p.numel() for p in gpt.parameters() if p.device.type != "meta")
        assert real == sum(p.numel() for p in params.values()), f"{key}: parameters outside the stage were created"
        report[key] = sorted(params)
    return report


def _check_coverage(results, layouts):
    """Every GPT parameter lives on some rank; each tied model's last stage also holds the embedding."""
    from megatron_code.model import GPT

    for key, (model_name, tp, pp) in layouts.items():
        with torch.device("meta"):
            names = {n for n, _ in GPT(_job(BASE + MODELS[model_name]).model).named_parameters()}
        held = set().union(*(set(r[key]) for r in results))
        assert held == names, f"{key}: missing {sorted(names - held)}"
        if pp > 1 and "tied" in model_name and "untied" not in model_name:
            assert "embed.word.weight" in results[-1][key], f"{key}: the last stage has no tied head"


def test_tp2_and_pp2_shards_equal_the_single_process_init():
    layouts = {f"{m} {tag}": (m, tp, pp) for m in MODELS for tag, tp, pp in (("tp2", 2, 1), ("pp2", 1, 2))}
    results = run_distributed(_check_layouts, 2, layouts, timeout=240)
    _check_coverage(results, layouts)


def test_tp2_pp2_shards_equal_the_single_process_init():
    layouts = {f"{m} tp2pp2": (m, 2, 2) for m in MODELS}
    results = run_distributed(_check_layouts, 4, layouts, timeout=240)
    _check_coverage(results, layouts)


@pytest.mark.parametrize("tp", [2, 4])
def test_init_of_a_meta_tp_model_is_the_slice_without_processes(tp):
    """Virtual TP ranks (no processes; at TP 4 the MQA K/V are replicated): both ways of initializing a meta,
    TP-sharded GPT (materialize_gpt_params; to_empty + init_weights) give each rank its slice of the plain init."""
    from megatron_code.model import GPT
    from megatron_code.model.init import module_seeds
    from megatron_code.parallel.sharded_init import materialize_gpt_params
    from megatron_code.parallel.groups import ParallelGroups
    from megatron_code.parallel.plans import plan_for
    from megatron_code.parallel.tensor_parallel import apply_tensor_parallel

    for model_name in MODELS:
        cfg = _job(BASE + MODELS[model_name]).model
        ref = GPT(cfg)
        ref.init_weights(torch.Generator().manual_seed(SEED))
        full = dict(ref.named_parameters())
        for r in range(tp):
            built = []
            for how in ("materialize", "init_weights"):
                with torch.device("meta"):
                    model = GPT(cfg)
                apply_tensor_parallel(model, plan_for(cfg, tp), ParallelGroups.virtual(tp=tp, rank=r))
                if how == "materialize":
                    materialize_gpt_params(model, cfg, module_seeds(model, torch.Generator().manual_seed(SEED)))
                else:
                    model.to_empty(device="cpu")
                    model.init_weights(torch.Generator().manual_seed(SEED))
                built.append(model)
            # to_empty makes new Parameters without the TP marks: read the split dims from the materialised one
            dims = {n: getattr(p, "partition_dim", None) for n, p in built[0].named_parameters()}
            assert sum(d is not None for d in dims.values()) > 0
            for model in built:
                for name, p in model.named_parameters():
                    want = full[name] if dims[name] is None else full[name].chunk(tp, dim=dims[name])[r]
                    assert torch.equal(p.detach(), want.detach()), (model_name, tp, r, name)


# ----------------------------------------------------------------------------- memory: never the whole model
# 24 layers x 12 h^2 (h = 768) ~ 170M parameters ~ 650 MB in fp32; a TP2 x PP2 rank holds ~ 1/4 of it, and the
# largest single weight (768 x 3072) is 9.4 MB.
BIG = ["--model.vocab_size", "512", "--model.num_layers", "24", "--model.hidden_size", "768",
       "--model.num_attention_heads", "12", "--model.ffn_hidden_size", "3072", "--model.max_position_embeddings",
       "32", "--seq-length", "16", "--mock-data", "--micro-batch-size", "1", "--global-batch-size", "1",
       "--model.position_embedding", "learned", "--tensor-model-parallel-size", "2",
       "--pipeline-model-parallel-size", "2", "--parallel.pipeline_partition", "uniform", "--seed", str(SEED)]


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _peak_growth(rank, world):
    from megatron_code.model import count_parameters

    import deepspeed.pipe  # noqa: F401  (imported lazily by build_pipeline: keep its code out of the measurement)

    job = _job(BIG)
    before = _maxrss_bytes()
    _, params, _ = _build_rank(job, 2, 2)
    grown = _maxrss_bytes() - before
    return grown, sum(p.numel() * p.element_size() for p in params.values()), count_parameters(job.model) * 4


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss units are Linux's")
def test_tp2_pp2_build_never_holds_the_full_model():
    results = run_distributed(_peak_growth, 4, timeout=240)
    full = results[0][2]
    for rank, (grown, mine, _) in enumerate(results):
        assert mine < full / 3, f"rank {rank} holds {mine} of {full} bytes"
        # Building the whole model first would grow the peak by >= `full` bytes on every rank.
        assert grown < full / 2, f"rank {rank}: peak RSS grew by {grown / 2**20:.0f} MiB during the build " \
                                 f"(full model {full / 2**20:.0f} MiB, own shard {mine / 2**20:.0f} MiB)"


# ----------------------------------------------------------------------------- meta-only paths at 540B
def test_palm_540b_print_config_and_meta_build():
    # The preset as it is (Adafactor on BF16_Optimizer's flat partitions, bf16, ZeRO-1), as
    # examples/slurm/palm540b_tp8_pp16.sbatch runs it
    out = subprocess.run([sys.executable, os.path.join(ROOT, "pretrain_code.py"), "--preset", "palm-540b",
                          "--tensor-model-parallel-size", "8", "--pipeline-model-parallel-size", "12",
                          "--zero-stage", "1", "--print-config"], capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "optimizer: adafactor" in out.stdout
    count = int(out.stdout.rsplit("parameters:", 1)[1].split()[0])
    assert count > 500e9

    # build_model for the last rank of TP8 x PP12 (virtual groups: no processes): everything stays on meta, only
    # build_pipeline draws the stage from the job seed; no memory is spent
    from megatron_code.config.cli import parse_args
    from megatron_code.parallel.groups import ParallelGroups
    from megatron_code.model.init import module_seeds
    from megatron_code.training.trainer import build_model

    job = parse_args(["--preset", "palm-540b", "--tensor-model-parallel-size", "8",
                      "--pipeline-model-parallel-size", "12", "--zero-stage", "1"]).job
    if job.model.vocab_size is None:
        job.model.vocab_size = 256000
    before = _maxrss_bytes()
    model = build_model(job, ParallelGroups.virtual(tp=8, pp=12, rank=95))
    assert all(p.device.type == "meta" for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) * 8 > 500e9  # the whole GPT, TP-sharded, on meta
    seeds = module_seeds(model, torch.Generator().manual_seed(job.training.seed))  # what build_pipeline draws
    assert len(seeds) == len(set(seeds.values())) and "layers.117.mlp.down_proj" in seeds
    assert _maxrss_bytes() - before < 2 ** 30


# ----------------------------------------------------------------------------- ZeRO-3 (DP) build
def _zero3_peak_growth(rank, world):
    """Peak RSS growth of build_partitioned_gpt for a model whose word embedding dominates (64K x 512, 128 MiB),
    with 4 MiB pieces; and this rank's bytes."""
    import megatron_code.parallel.sharded_init as init
    from megatron_code.config.cli import parse_args
    from megatron_code.parallel.engine import build_partitioned_gpt, init_distributed
    from megatron_code.testing import peak_rss_growth

    init_distributed("gloo")
    init.PIECE_ELEMENTS = 1 << 20
    job = parse_args(["--preset", "tiny", "--model.vocab_size", "65536", "--model.num_layers", "1",
                      "--model.hidden_size", "512", "--model.num_attention_heads", "4", "--model.ffn_hidden_size",
                      "512", "--seq-length", "16", "--mock-data", "--micro-batch-size", "1",
                      "--global-batch-size", "2", "--zero-stage", "3", "--seed", str(SEED)]).job
    build_partitioned_gpt(job, 1)  # once, so DeepSpeed's lazy imports and buffers are not measured
    with peak_rss_growth() as grown:
        model = build_partitioned_gpt(job, 1)
    mine = sum(p.ds_tensor.numel() * p.ds_tensor.element_size() for p in model.parameters())
    return grown.bytes, mine, 65536 * 512 * 4


@pytest.mark.skipif(sys.platform != "linux", reason="/proc/self/clear_refs is Linux's")
def test_zero3_build_never_holds_a_whole_parameter():
    for rank, (grown, mine, embedding) in enumerate(run_distributed(_zero3_peak_growth, 2, timeout=240)):
        # Holding the embedding whole at any point (zero.Init's broadcast, a gather for the draw) grows the peak by
        # this rank's share (~67 MiB here) plus >= 128 MiB; pieces add 4 MiB (and allocator slack) to the share.
        assert grown < mine + 0.4 * embedding, f"rank {rank}: peak RSS grew by {grown / 2**20:.0f} MiB during the " \
            f"ZeRO-3 build (embedding {embedding / 2**20:.0f} MiB, own share {mine / 2**20:.0f} MiB)"
