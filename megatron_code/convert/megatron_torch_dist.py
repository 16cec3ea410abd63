"""Megatron-LM ``--ckpt-format torch_dist`` checkpoints <-> ours, through PyTorch's own torch.distributed.checkpoint.

Megatron's torch_dist layout (megatron/core/dist_checkpointing: serialization.py, strategies/torch.py):

    DIR/latest_checkpointed_iteration.txt
    DIR/iter_0001000/.metadata, __R_N.distcp   a torch.distributed.checkpoint (DCP) checkpoint of the sharded part
    DIR/iter_0001000/common.pt                 torch.save of the rest: 'args', 'checkpoint_version', 'iteration'
    DIR/iter_0001000/metadata.json             {"sharded_backend": "torch_dist", ...}

DCP stores *global* tensors whatever the TP x PP layout that wrote them (Megatron reshards on load), so reading and
writing need no TP/PP split. Model tensors are keyed by Megatron-Core's sharded names: the layers of the
TransformerBlock are stacked on a leading axis of size num_layers (``decoder.layers.self_attention.linear_qkv.weight``
[L, ...]), norms use Transformer Engine's names even with the local spec (``linear_qkv.layer_norm_weight``,
``linear_fc1.layer_norm_weight``), SwiGLU's linear_fc1 is global ``[gate of all ranks; up of all ranks]``
(mlp.apply_swiglu_sharded_factory; ``_w``/``_v`` keys with singleton local shards) and each linear's
``_extra_state`` is a ShardedObject saved as the bytes of ``torch.save([obj])`` under
``{key}/shard_{layer}_{num_layers}``.

Adam state (Megatron-Core's optimizer ``sharded_state_dict``, non-distributed and distributed optimizer alike):
``optimizer.state.exp_avg.<model key>`` and ``optimizer.state.exp_avg_sq.<model key>`` with the model tensor's
global shape (layers stacked the same way), ``optimizer.state.fp32_param.<model key>`` (the fp32 masters of a
bf16/fp16 run) and, in ``common.pt``, ``optimizer.state.common_step`` and the param groups, and
``opt_param_scheduler`` (their load_checkpoint reads it whenever it loads the optimizer). Read and written here.

RNG (megatron/training/checkpointing.py get_rng_state(ckpt_format='torch_dist')): one ShardedObject
``rng_state`` per (pp, tp) rank, global shape (PP, TP), replica_id = DP rank (so DP rank 0's list is stored), stored
by DCP as the bytes of ``torch.save([rng_state_list])`` under ``rng_state/shard_{pp}.{tp}_{PP}.{TP}``; each list holds
the legacy format's dicts (``random_rng_state``, ``np_rng_state``, ``torch_rng_state``, ``cuda_rng_state``,
``rng_tracker_states``), so both directions reuse megatron_lm_state's legacy mapping (rng_to_ours / rng_from_ours):
the CPU generators are ours exactly, the CUDA states are kept per rank in ``megatron_rng`` for a re-export. (With
expert parallelism the grid is (PP, TP, DP): DP rank 0's objects are read.) Their load_checkpoint restores the RNG
only when the checkpoint's ``args`` TP x PP equal the run's (otherwise it prints "(TP, PP) mismatch after resume
...: RNG state will be ignored" and goes on with weights and optimizer), so an export writes the objects of the
TP x PP grid it is asked for, recorded in its args.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil

import torch

from ..config.job import JobConfig
from ..utils import atomic
from . import megatron_lm as mlm

METADATA = "metadata.json"
COMMON = "common.pt"
_BACKEND = {"sharded_backend": "torch_dist", "sharded_backend_version": 1, "common_backend": "torch",
            "common_backend_version": 1}
_NOT_MODEL = ("optimizer.", "rng_state", "rerun_state_machine", "opt_param_scheduler")
_OPT = "optimizer.state."
_DIST_OPT = "optimizer.distributed."
_OPT_STATES = ("exp_avg", "exp_avg_sq", "fp32_param")
# Megatron-Core's sharded names (Transformer Engine style) for what the legacy files call input/pre-MLP norms
_TE_NORMS = [(r"\.input_layernorm\.(weight|bias)$", r".self_attention.linear_qkv.layer_norm_\1"),
             (r"\.pre_mlp_layernorm\.(weight|bias)$", r".mlp.linear_fc1.layer_norm_\1")]
_LINEARS = ("self_attention.linear_qkv", "self_attention.linear_proj", "mlp.linear_fc1", "mlp.linear_fc2")
_RNG = "rng_state/shard_"
# common.pt's content_metadata as core_v0.16.1's save_checkpoint writes it (_build_sharded_state_dict_metadata for a
# run without the distributed optimizer); their load passes it to the model's and optimizer's sharded_state_dict
_CONTENT = {"singleton_local_shards": False, "chained_optim_avoid_prefix": True}


def is_torch_dist(tag_dir: str) -> bool:
    path = os.path.join(tag_dir, METADATA)
    if not os.path.isfile(path):
        return False
    try:
        return json.load(open(path)).get("sharded_backend") == "torch_dist"
    except (OSError, ValueError):
        return False


def read_rng(tag_dir: str) -> dict[str, list]:
    """{"tp,pp": that rank's rng_state list (one dict per DP rank)} from a torch_dist iteration's rng_state
    ShardedObjects; empty when it has none (--no-save-rng)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    reader = dcp.FileSystemReader(tag_dir)
    keys = [k for k, m in reader.read_metadata().state_dict_metadata.items()
            if k.startswith(_RNG) and isinstance(m, BytesStorageMetadata)]
    if not keys:
        return {}
    objs: dict[str, object] = {k: io.BytesIO() for k in keys}
    dcp.load(objs, storage_reader=reader, no_dist=True)  # each value becomes torch.load of its bytes: [list]
    out = {}
    for k, obj in objs.items():
        offset = [int(x) for x in k[len(_RNG):].split("_")[0].split(".")]
        if len(offset) not in (2, 3) or not isinstance(obj, list) or len(obj) != 1:
            raise mlm.MegatronCheckpointError(f"{tag_dir}: {k} is not an rng_state object Megatron-LM writes")
        if len(offset) == 3 and offset[2] != 0:
            continue  # expert-parallel runs shard it by DP rank too: DP rank 0's, as the legacy import reads
        out[f"{offset[1]},{offset[0]}"] = obj[0]
    return out


def attach_rng(tag_dir: str, client_state: dict) -> None:
    """An import's RNG, as the legacy import keeps it: our "rng" from (tp 0, pp 0)'s DP-rank-0 entry (the CPU
    generators exactly) and every rank's list in "megatron_rng" for a re-export."""
    from . import megatron_lm_state as mls

    rng = read_rng(tag_dir)
    if rng.get("0,0"):
        client_state["rng"] = mls.rng_to_ours(rng["0,0"])
        client_state["megatron_rng"] = rng


def common_step(common: dict):
    """The Adam step in common.pt: {'optimizer': {'state': {'common_step'}}} for fp32 runs; bf16/fp16 runs
    (Float16OptimizerWithFloat16Params.state_dict) nest torch's part one level deeper, under 'optimizer'."""
    opt = common.get("optimizer") or {}
    if "state" not in opt and isinstance(opt.get("optimizer"), dict):
        opt = opt["optimizer"]
    return (opt.get("state") or {}).get("common_step")


def read_torch_dist(tag_dir: str) -> tuple[dict, dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """(common state: args, iteration, ...; canonical full Megatron tensors, layers unstacked; the optimizer's
    {"exp_avg"|"exp_avg_sq"|"fp32_param": canonical tensors}, empty without optimizer state) from a torch_dist
    iteration directory, read with torch.distributed.checkpoint in this one process. The RNG states: read_rng."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    common = torch.load(os.path.join(tag_dir, COMMON), map_location="cpu", weights_only=False)
    reader = dcp.FileSystemReader(tag_dir)
    meta = reader.read_metadata().state_dict_metadata
    want = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in meta.items()
            if isinstance(m, TensorStorageMetadata) and (not k.startswith(_NOT_MODEL) or k.startswith(_OPT))}
    if not want:
        raise mlm.MegatronCheckpointError(f"{tag_dir} holds no model tensors (an optimizer-only distributed "
                                          f"checkpoint?)")
    dcp.load(want, storage_reader=reader, no_dist=True)
    layers = common["args"].num_layers
    optim = {s: _unstack({k[len(f"{_OPT}{s}."):]: v for k, v in want.items() if k.startswith(f"{_OPT}{s}.")},
                         layers) for s in _OPT_STATES}
    model = _unstack({k: v for k, v in want.items() if not k.startswith(_OPT)}, layers)
    optim = {s: t for s, t in optim.items() if t}
    if any(k.startswith(_DIST_OPT) for k in meta):
        optim, step = _read_dist_opt(tag_dir, reader, meta, common, model)
        common = {**common, "optimizer": {"state": {"common_step": torch.tensor(float(step))}}}
    return common, model, optim


def _read_dist_opt(tag_dir: str, reader, meta: dict, common: dict, model: dict) -> tuple[dict, int]:
    """The distributed optimizer's torch_dist state in its default 'dp_reshardable' form (distrib_optimizer.py
    sharded_param_state_dp_reshardable): per DDP bucket one flat tensor each of fp32 `param`, `exp_avg`,
    `exp_avg_sq` holding the bucket's parameters with their 64-element start padding, without the bucket's end
    padding: the buckets laid end to end are distrib_optim.pt's flat tensors, so megatron_lm_state.buffer_layout
    gives each parameter's offset. The step is in each param group of the `optimizer` object."""
    import io

    import torch.distributed.checkpoint as dcp

    from . import megatron_lm_state as mls

    args = common["args"]
    layout = (int(getattr(args, "tensor_model_parallel_size", 1) or 1),
              int(getattr(args, "pipeline_model_parallel_size", 1) or 1))
    if layout != (1, 1) or common.get("content_metadata", {}).get("distrib_optim_sharding_type") != "dp_reshardable":
        raise mls.OptimLayoutError(
            f"{tag_dir}: the distributed optimizer's torch_dist state is read for TP1 x PP1 'dp_reshardable' saves "
            f"only (this one: TP{layout[0]} x PP{layout[1]}, "
            f"{common.get('content_metadata', {}).get('distrib_optim_sharding_type')}); re-save it in Megatron-LM "
            f"with --ckpt-convert-format torch --ckpt-convert-save DIR (its legacy distributed optimizer files are "
            f"read at any TP x PP) and convert DIR")
    buckets: dict[tuple, dict[str, str]] = {}
    for k in meta:
        m = re.fullmatch(rf"{re.escape(_DIST_OPT)}dp_group_idx_(\d+)\.gbuf_idx_(\d+)\.dtype_(.*)\.bucket_idx_(\d+)\."
                         r"(param|exp_avg|exp_avg_sq)", k)
        if m:
            buckets.setdefault((int(m[1]), int(m[2]), m[3]), {}).setdefault(int(m[4]), {})[m[5]] = k
    if len(buckets) != 1:
        raise mls.OptimLayoutError(f"{tag_dir}: {len(buckets)} distributed-optimizer buffers (MoE, several dtypes "
                                   f"or optimizer instances) are not supported")
    per_bucket = next(iter(buckets.values()))
    want = {k: torch.empty(meta[k].size, dtype=meta[k].properties.dtype) for b in per_bucket.values()
            for k in b.values()}
    objs = {k: io.BytesIO() for k in meta if k.startswith(_DIST_OPT) and k.split("/")[0].endswith(".optimizer")}
    both = {**want, **objs}
    dcp.load(both, storage_reader=reader, no_dist=True)  # each BytesIO is replaced by its torch.load'ed object
    objs = {k: both[k] for k in objs}
    flat = {s: torch.cat([want[per_bucket[b][s]].reshape(-1).float() for b in sorted(per_bucket)])
            for s in ("param", "exp_avg", "exp_avg_sq")}
    cfg = mlm.job_from_args(args).model
    params = [(k, v.shape, k) for k, v in mls.stages(cfg, model, 1)[0].items()]
    starts, total = mls.buffer_layout(params, args, 1)
    if flat["param"].numel() != total:
        raise mls.OptimLayoutError(f"{tag_dir}: {flat['param'].numel()} elements in the distributed optimizer's "
                                   f"buckets, the DDP buffer layout of {mls.SOURCE} gives {total} for this model")
    groups = [g for obj in objs.values() for g in obj[0]["param_groups"]] if len(objs) == 1 else []
    steps = {g.get("step") for g in groups}
    if len(steps) != 1 or None in steps:
        raise mls.OptimLayoutError(f"{tag_dir}: the distributed optimizer's param groups record steps "
                                   f"{sorted(map(str, steps))}, not one")
    out = {s: {n: flat[src][starts[n]:starts[n] + math.prod(shape)].reshape(shape).clone() for n, shape, _ in params}
           for s, src in (("exp_avg", "exp_avg"), ("exp_avg_sq", "exp_avg_sq"), ("fp32_param", "param"))}
    return out, int(steps.pop())


def _unstack(want: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """Megatron-Core's sharded keys (layers stacked) -> canonical per-layer tensors (float32)."""
    flat: dict[str, torch.Tensor] = {}
    for k, v in want.items():
        k = k[len("model."):] if k.startswith("model.") else k
        m = re.fullmatch(r"(.*linear_fc1\.(?:weight|bias))_([wv])", k)
        if m:  # SwiGLU saved with singleton local shards: gate (_w) and up (_v) as two tensors
            flat.setdefault(m[1], {})[m[2]] = v
            continue
        flat[k] = v
    for k, v in list(flat.items()):
        if isinstance(v, dict):
            flat[k] = torch.cat([v["w"], v["v"]])
    full: dict[str, torch.Tensor] = {}
    for k, v in flat.items():
        if k.startswith("decoder.layers."):
            if v.shape[0] != layers:
                raise mlm.MegatronCheckpointError(f"{k} stacks {v.shape[0]} layers, the args say {layers} (MoE or "
                                                  f"per-layer-keyed checkpoints are not supported)")
            rest = k[len("decoder.layers."):]
            for i in range(layers):
                full[mlm.canonical(f"decoder.layers.{i}.{rest}")] = v[i].float()
        else:
            full[mlm.canonical(k)] = v.float()
    return full


def _stacked(cfg, full: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Canonical per-layer tensors -> Megatron-Core's sharded keys (layers stacked, TE norm names)."""
    L, out, per_layer = cfg.num_layers, {}, {}
    for k, v in full.items():
        v = v.contiguous()
        if k.startswith("decoder.layers."):
            _, _, i, rest = k.split(".", 3)
            for pattern, repl in _TE_NORMS:
                rest = re.sub(pattern, repl, "." + rest)[1:]
            per_layer.setdefault(rest, [None] * L)[int(i)] = v
        elif k != "output_layer.weight" or not cfg.tie_embeddings:
            out[k] = v
    out.update({f"decoder.layers.{rest}": torch.stack(vs) for rest, vs in per_layer.items()})
    return out


def write_torch_dist(job: JobConfig, sd: dict[str, torch.Tensor], save_dir: str, iteration: int = 0,
                     consumed: int = 0, dtype: torch.dtype | None = None, optim: dict | None = None,
                     step: int | None = None, client_state: dict | None = None, tp: int = 1, pp: int = 1) -> str:
    """Write Megatron-LM's torch_dist layout with torch.distributed.checkpoint (global tensors: Megatron-LM loads
    it at any TP x PP), the weights in `dtype` (default: the run's precision). `optim` ({"exp_avg": ours,
    "exp_avg_sq": ours}) and `step`: the Adam state, under Megatron-Core's optimizer keys (with the fp32 masters when
    the weights are bf16/fp16), and the scheduler state. `client_state`: our saved "rng"/"tp_rng" (or an
    imported run's "megatron_rng"), written as the rng_state objects of a TP `tp` x PP `pp` launch (the layout the
    args record: their load restores the RNG at that layout and ignores it at any other). Returns the iteration
    directory."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

    from . import megatron_lm_state as mls

    cfg = job.model
    if os.path.isdir(save_dir) and os.listdir(save_dir):
        raise mlm.MegatronCheckpointError(f"--save {save_dir} is not empty: choose a new directory")
    mlm.check_exportable(cfg)
    if cfg.num_layers % pp or cfg.num_attention_heads % tp or cfg.num_kv_heads % tp:
        raise mlm.MegatronCheckpointError(f"TP{tp} x PP{pp}: {cfg.num_layers} layers, {cfg.num_attention_heads} heads "
                                          f"and {cfg.num_kv_heads} query groups do not split over it")
    L = cfg.num_layers
    if dtype is None:  # the run's precision, as their save writes a bf16/fp16 run's model
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(job.training.precision, torch.float32)
    master = {k: v.float() for k, v in mlm.from_ours(cfg, sd).items()}
    flat: dict[str, object] = _stacked(cfg, {k: v.to(dtype) for k, v in master.items()})
    for s, tensors in (optim or {}).items():
        flat.update({f"{_OPT}{s}.{k}": v for k, v in _stacked(cfg, mlm.from_ours(cfg, tensors)).items()})
    if optim and dtype != torch.float32:  # Float16OptimizerWithFloat16Params' fp32 masters
        flat.update({f"{_OPT}fp32_param.{k}": v for k, v in _stacked(cfg, master).items()})
    for lin in _LINEARS:  # ShardedObjects Megatron-Core's model requests on load (None: local-spec linears);
        for i in range(L):  # DCP stores a non-tensor as torch.save(obj) bytes, as Megatron stores [obj]
            flat[f"decoder.layers.{lin}._extra_state/shard_{i}_{L}"] = [None]
    cs = client_state or {}
    for r in range(tp):  # what get_rng_state(ckpt_format='torch_dist') saves: ShardedObject bytes of [rng list];
        for s in range(pp):
            rng = (cs.get("megatron_rng") or {}).get(f"{r},{s}") or \
                mls.rng_from_ours(cs.get("rng"), cs.get("tp_rng"), job.training.seed, r, s)
            flat[f"{_RNG}{s}.{r}_{pp}.{tp}"] = [rng]  # DCP writes a non-tensor as torch.save(obj) bytes
    tag = f"iter_{iteration:07d}"
    staged = os.path.join(save_dir, ".staging", tag)
    os.makedirs(staged)
    # flatten_state_dict off: the keys are already flat, and DCP's flattening would split the rng_state lists of
    # dicts into one entry per leaf where Megatron stores one object
    dcp.save(flat, storage_writer=dcp.FileSystemWriter(staged), planner=DefaultSavePlanner(flatten_state_dict=False),
             no_dist=True)
    args = mlm.args_from_job(job, tp, pp, iteration, consumed)
    args.ckpt_format = "torch_dist"
    common = {"args": args, "checkpoint_version": mlm.CHECKPOINT_VERSION, "iteration": iteration,
              "num_floating_point_operations_so_far": 0, "content_metadata": dict(_CONTENT)}
    if optim:  # Megatron-Core's optimizer common part: the Adam step and its two groups (weight decay, none)
        o = job.optim
        group = {"lr": o.lr, "min_lr": o.min_lr, "max_lr": o.lr, "betas": (o.adam_beta1, o.adam_beta2),
                 "eps": o.adam_eps, "lr_mult": 1.0, "is_expert_parallel": False, "default_config": True,
                 "is_decoupled_lr": False, "amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
                 "differentiable": False, "fused": None, "decoupled_weight_decay": True}
        inner = {"state": {"common_step": torch.tensor(float(step or 0))},
                 "param_groups": [{**group, "wd_mult": m, "weight_decay": o.weight_decay * m} for m in (1.0, 0.0)]}
        # bf16/fp16: Float16OptimizerWithFloat16Params nests torch's part (no grad_scaler: an fp16 load starts its
        # loss scale afresh, as for the legacy export)
        common["optimizer"] = inner if dtype == torch.float32 else {"optimizer": inner}
        common["opt_param_scheduler"] = mls.scheduler_state(job, iteration)
    torch.save(common, os.path.join(staged, COMMON))
    with open(os.path.join(staged, METADATA), "w") as f:
        json.dump(_BACKEND, f)
    final = atomic.publish_tag(save_dir, staged, tag, {mlm.TRACKER: str(iteration)})
    shutil.rmtree(os.path.join(save_dir, ".staging"), ignore_errors=True)
    return final
