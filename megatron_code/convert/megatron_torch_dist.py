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
bf16/fp16 run) and, in ``common.pt``, ``optimizer.state.common_step`` and the param groups. Read and written here.
RNG states (``rng_state``, ShardedObjects of CUDA generator states) are not: our CPU/CUDA streams differ; load an
export in Megatron-LM with --no-load-rng.
"""

from __future__ import annotations

import json
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
_OPT_STATES = ("exp_avg", "exp_avg_sq", "fp32_param")
# Megatron-Core's sharded names (Transformer Engine style) for what the legacy files call input/pre-MLP norms
_TE_NORMS = [(r"\.input_layernorm\.(weight|bias)$", r".self_attention.linear_qkv.layer_norm_\1"),
             (r"\.pre_mlp_layernorm\.(weight|bias)$", r".mlp.linear_fc1.layer_norm_\1")]
_LINEARS = ("self_attention.linear_qkv", "self_attention.linear_proj", "mlp.linear_fc1", "mlp.linear_fc2")


def is_torch_dist(tag_dir: str) -> bool:
    path = os.path.join(tag_dir, METADATA)
    if not os.path.isfile(path):
        return False
    try:
        return json.load(open(path)).get("sharded_backend") == "torch_dist"
    except (OSError, ValueError):
        return False


def read_torch_dist(tag_dir: str) -> tuple[dict, dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """(common state: args, iteration, ...; canonical full Megatron tensors, layers unstacked; the optimizer's
    {"exp_avg"|"exp_avg_sq"|"fp32_param": canonical tensors}, empty without optimizer state) from a torch_dist
    iteration directory, read with torch.distributed.checkpoint in this one process."""
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
    model = {k: v for k, v in want.items() if not k.startswith(_OPT)}
    return common, _unstack(model, layers), {s: t for s, t in optim.items() if t}


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
                     consumed: int = 0, dtype: torch.dtype = torch.float32, optim: dict | None = None,
                     step: int | None = None) -> str:
    """Write Megatron-LM's torch_dist layout with torch.distributed.checkpoint (global tensors: Megatron-LM loads
    it at any TP x PP). `optim` ({"exp_avg": ours, "exp_avg_sq": ours}) and `step`: the Adam state, under
    Megatron-Core's optimizer keys. Returns the iteration directory."""
    import torch.distributed.checkpoint as dcp

    cfg = job.model
    if os.path.isdir(save_dir) and os.listdir(save_dir):
        raise mlm.MegatronCheckpointError(f"--save {save_dir} is not empty: choose a new directory")
    mlm.check_exportable(cfg)
    L = cfg.num_layers
    flat: dict[str, object] = _stacked(cfg, {k: v.to(dtype) for k, v in mlm.from_ours(cfg, sd).items()})
    for s, tensors in (optim or {}).items():
        flat.update({f"{_OPT}{s}.{k}": v for k, v in _stacked(cfg, mlm.from_ours(cfg, tensors)).items()})
    for lin in _LINEARS:  # ShardedObjects Megatron-Core's model requests on load (None: local-spec linears);
        for i in range(L):  # DCP stores a non-tensor as torch.save(obj) bytes, as Megatron stores [obj]
            flat[f"decoder.layers.{lin}._extra_state/shard_{i}_{L}"] = [None]
    tag = f"iter_{iteration:07d}"
    staged = os.path.join(save_dir, ".staging", tag)
    os.makedirs(staged)
    dcp.save(flat, storage_writer=dcp.FileSystemWriter(staged), no_dist=True)
    args = mlm.args_from_job(job, 1, 1, iteration, consumed)
    args.ckpt_format = "torch_dist"
    common = {"args": args, "checkpoint_version": mlm.CHECKPOINT_VERSION, "iteration": iteration,
              "num_floating_point_operations_so_far": 0}
    if optim:  # Megatron-Core's optimizer common part: the Adam step and its two groups (weight decay, none)
        o = job.optim
        group = {"lr": o.lr, "min_lr": o.min_lr, "max_lr": o.lr, "betas": (o.adam_beta1, o.adam_beta2),
                 "eps": o.adam_eps, "weight_decay": o.weight_decay, "lr_mult": 1.0, "is_expert_parallel": False,
                 "default_config": True, "is_decoupled_lr": False}
        common["optimizer"] = {"state": {"common_step": torch.tensor(float(step or 0))},
                               "param_groups": [{**group, "wd_mult": 1.0}, {**group, "wd_mult": 0.0}]}
    torch.save(common, os.path.join(staged, COMMON))
    with open(os.path.join(staged, METADATA), "w") as f:
        json.dump(_BACKEND, f)
    final = atomic.publish_tag(save_dir, staged, tag, {mlm.TRACKER: str(iteration)})
    shutil.rmtree(os.path.join(save_dir, ".staging"), ignore_errors=True)
    return final
