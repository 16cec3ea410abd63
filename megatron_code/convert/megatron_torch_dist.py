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
``{key}/shard_{layer}_{num_layers}``. Optimizer (``optimizer.*``) and RNG (``rng_state``) entries are not read;
exports hold neither (load them in Megatron-LM with --no-load-optim --no-load-rng).
"""

from __future__ import annotations

import json
import os
import re
import shutil

import torch

from ..config.job import JobConfig
from . import megatron_lm as mlm

METADATA = "metadata.json"
COMMON = "common.pt"
_BACKEND = {"sharded_backend": "torch_dist", "sharded_backend_version": 1, "common_backend": "torch",
            "common_backend_version": 1}
_NOT_MODEL = ("optimizer.", "rng_state", "rerun_state_machine", "opt_param_scheduler")
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


def read_torch_dist(tag_dir: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(common state: args, iteration, ...; canonical full Megatron tensors, layers unstacked) from a torch_dist
    iteration directory, read with torch.distributed.checkpoint in this one process."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    common = torch.load(os.path.join(tag_dir, COMMON), map_location="cpu", weights_only=False)
    reader = dcp.FileSystemReader(tag_dir)
    meta = reader.read_metadata().state_dict_metadata
    want = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in meta.items()
            if isinstance(m, TensorStorageMetadata) and not k.startswith(_NOT_MODEL)}
    if not want:
        raise mlm.MegatronCheckpointError(f"{tag_dir} holds no model tensors (an optimizer-only distributed "
                                          f"checkpoint?)")
    dcp.load(want, storage_reader=reader, no_dist=True)
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
    layers = common["args"].num_layers
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
    return common, full


def write_torch_dist(job: JobConfig, sd: dict[str, torch.Tensor], save_dir: str, iteration: int = 0,
                     consumed: int = 0, dtype: torch.dtype = torch.float32) -> str:
    """Write Megatron-LM's torch_dist layout with torch.distributed.checkpoint (global tensors: Megatron-LM loads
    it at any TP x PP). Returns the iteration directory."""
    import torch.distributed.checkpoint as dcp

    cfg = job.model
    if os.path.isdir(save_dir) and os.listdir(save_dir):
        raise mlm.MegatronCheckpointError(f"--save {save_dir} is not empty: choose a new directory")
    mlm.check_exportable(cfg)
    full = {k: v.to(dtype).contiguous() for k, v in mlm.from_ours(cfg, sd).items()}
    L = cfg.num_layers
    flat: dict[str, object] = {}
    per_layer: dict[str, list] = {}
    for k, v in full.items():
        if k.startswith("decoder.layers."):
            _, _, i, rest = k.split(".", 3)
            for pattern, repl in _TE_NORMS:
                rest = re.sub(pattern, repl, "." + rest)[1:]
            per_layer.setdefault(rest, [None] * L)[int(i)] = v
        elif k != "output_layer.weight" or not cfg.tie_embeddings:
            flat[k] = v
    for rest, vs in per_layer.items():
        flat[f"decoder.layers.{rest}"] = torch.stack(vs)
    for lin in _LINEARS:  # ShardedObjects Megatron-Core's model requests on load (None: local-spec linears);
        for i in range(L):  # DCP stores a non-tensor as torch.save(obj) bytes, as Megatron stores [obj]
            flat[f"decoder.layers.{lin}._extra_state/shard_{i}_{L}"] = [None]
    tag = f"iter_{iteration:07d}"
    staged = os.path.join(save_dir, ".staging", tag)
    os.makedirs(staged)
    dcp.save(flat, storage_writer=dcp.FileSystemWriter(staged), no_dist=True)
    args = mlm.args_from_job(job, 1, 1, iteration, consumed)
    args.ckpt_format = "torch_dist"
    torch.save({"args": args, "checkpoint_version": mlm.CHECKPOINT_VERSION, "iteration": iteration,
                "num_floating_point_operations_so_far": 0}, os.path.join(staged, COMMON))
    with open(os.path.join(staged, METADATA), "w") as f:
        json.dump(_BACKEND, f)
    os.rename(staged, os.path.join(save_dir, tag))
    shutil.rmtree(os.path.join(save_dir, ".staging"), ignore_errors=True)
    with open(os.path.join(save_dir, mlm.TRACKER), "w") as f:
        f.write(str(iteration))
    return os.path.join(save_dir, tag)
