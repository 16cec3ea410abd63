"""Megatron-DeepSpeed checkpoints <-> ours.

Megatron-DeepSpeed (megatron/checkpointing.py with --deepspeed) saves through DeepSpeed's engine into
``DIR/global_stepN/`` (``DIR/latest`` names the tag; ``DIR/latest_checkpointed_iteration.txt`` holds N):

- without a pipeline (``--no-pipeline-parallel``): ``mp_rank_{tp:02d}_model_states.pt`` whose 'module' is the
  legacy GPTModel's ``state_dict_for_save_checkpoint`` (``language_model.embedding.word_embeddings.weight``,
  ``language_model.encoder.layers.N.self_attention.query_key_value.weight``, ...), next to Megatron's client state
  ('args', 'checkpoint_version', 'iteration', 'tokens');
- with GPTModelPipe: one file per pipeline layer and TP rank, ``layer_{idx:02d}-model_{tp:02d}-model_states.pt``
  (idx 0 is a cast function, 1 the embedding, 2..L+1 the transformer layers, L+2 the final norm, L+3 the LM head
  or the tied embedding), plus ``mp_rank_{tp:02d}_model_states.pt`` holding the client state.

Fused QKV rows per TP shard: current Megatron-DeepSpeed (megatron/model/transformer.py, ParallelAttention.forward)
splits them into three equal blocks ``[q; k; v]`` (multi-head attention; its grouped-query path is not consistent
there), unlike Megatron-LM's per-head interleave; ``qkv_layout="per-head"`` reads/writes the older Megatron order.
Everything else (TP split dims, SwiGLU ``[gate; up]``, the args Namespace) is Megatron-LM's (see megatron_lm.py).
Weights, iteration and consumed samples are converted here. The ZeRO optimizer shards
(``[bf16_]zero_pp_rank_D_mp_rank_XX_optim_states.pt``) go through DeepSpeed's ds_to_universal on import and are
written as a universal folder on export (megatron_deepspeed_universal.py), with the CPU RNG states.
"""

from __future__ import annotations

import os
import re
import shutil

import torch

from ..config.job import JobConfig
from ..utils import atomic
from ..parallel import deepspeed_compat as dsc
from ..parallel.reshard import FullState
from . import megatron_lm as mlm
from .megatron_lm import MegatronCheckpointError

# canonical (Megatron-Core) name <-> legacy name, for writing
_LEGACY = [
    (r"^embedding\.", "language_model.embedding."),
    (r"^decoder\.final_layernorm\.", "language_model.encoder.final_layernorm."),
    (r"^decoder\.layers\.", "language_model.encoder.layers."),
    (r"^output_layer\.", "language_model.output_layer."),
    (r"\.pre_mlp_layernorm\.", ".post_attention_layernorm."),
    (r"\.self_attention\.linear_qkv\.", ".self_attention.query_key_value."),
    (r"\.self_attention\.linear_proj\.", ".self_attention.dense."),
    (r"\.mlp\.linear_fc1\.", ".mlp.dense_h_to_4h."),
    (r"\.mlp\.linear_fc2\.", ".mlp.dense_4h_to_h."),
]


def _legacy(key: str) -> str:
    for pattern, repl in _LEGACY:
        key = re.sub(pattern, repl, key)
    return key


def _qkv_to_groups(cfg, t: torch.Tensor, tp: int) -> torch.Tensor:
    """One TP shard's [q; k; v] blocks -> Megatron's per-group rows."""
    ng, qpg, d = mlm._groups(cfg)
    ng_l = ng // tp
    q, k, v = t.split([ng_l * qpg * d, ng_l * d, ng_l * d])
    rest = t.shape[1:]
    return torch.cat([q.reshape(ng_l, qpg, d, *rest), k.reshape(ng_l, 1, d, *rest), v.reshape(ng_l, 1, d, *rest)],
                     dim=1).reshape(-1, *rest)


def _qkv_to_blocks(cfg, t: torch.Tensor, tp: int) -> torch.Tensor:
    ng, qpg, d = mlm._groups(cfg)
    g = t.reshape(ng // tp, qpg + 2, d, *t.shape[1:])
    return torch.cat([g[:, :qpg].reshape(-1, *t.shape[1:]), g[:, qpg].reshape(-1, *t.shape[1:]),
                      g[:, qpg + 1].reshape(-1, *t.shape[1:])])


def _is_qkv(key: str) -> bool:
    return ".self_attention.linear_qkv." in key


# --------------------------------------------------------------------------------------------- reading
def _tag(load_dir: str) -> str:
    latest = os.path.join(load_dir, "latest")
    if os.path.isfile(latest):
        return open(latest).read().strip()
    tracker = os.path.join(load_dir, mlm.TRACKER)
    if os.path.isfile(tracker):
        return f"global_step{int(open(tracker).read().strip())}"
    raise MegatronCheckpointError(f"{load_dir} has neither 'latest' nor {mlm.TRACKER}: not a Megatron-DeepSpeed "
                                  f"checkpoint directory (give the directory passed to --save)")


def _load_client(path: str) -> dict:
    import warnings

    try:
        with warnings.catch_warnings():  # unpickling their args imports megatron.core, which warns about apex/TE
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as exc:  # the pickled args hold megatron.core enums (ModelType)
        raise MegatronCheckpointError(f"{path}: its pickled args need the module {exc.name!r}: pip install "
                                      f"megatron-core (or put your Megatron-DeepSpeed checkout on PYTHONPATH)")


def read_megatron_deepspeed(load_dir: str, qkv_layout: str = "blocks",
                            load_optim: bool = True) -> tuple[JobConfig, FullState]:
    """Weights (and, unless `load_optim` is False, the Adam state and CPU RNG) of a Megatron-DeepSpeed save
    directory. With ZeRO optimizer shards in global_stepN the whole state goes through DeepSpeed's ds_to_universal;
    a directory we exported holds the optimizer state as global_stepN_universal (named by latest_universal)."""
    from . import megatron_deepspeed_universal as mdsu

    tag = _tag(load_dir)
    d = os.path.join(load_dir, tag)
    if not os.path.isdir(d):
        raise MegatronCheckpointError(f"{load_dir}/latest names {tag} but {d} is missing")
    names = os.listdir(d)
    rank_files = dsc.model_states_files(names)
    if not rank_files:
        raise MegatronCheckpointError(f"{d} holds no mp_rank_XX_model_states.pt: not a Megatron-DeepSpeed checkpoint")
    states = [_load_client(os.path.join(d, f)) for f in rank_files]
    args = states[0].get("args")
    if args is None:
        raise MegatronCheckpointError(f"{d}/{rank_files[0]} has no 'args' (Megatron-DeepSpeed's client state)")
    if load_optim and mdsu.optimizer_shards(names):
        return mdsu.read_global_step_with_optimizer(d, states[0], qkv_layout)
    universal = os.path.join(load_dir, "latest_universal")
    if load_optim and os.path.isfile(universal):
        folder = os.path.join(load_dir, open(universal).read().strip())
        client = mdsu.client_state(folder) if os.path.isdir(folder) else None
        if client is not None and int(client.get("iteration", -1)) == int(states[0].get("iteration", 0)):
            return mdsu.read_megatron_deepspeed_universal(folder, client, qkv_layout)
    # one mp_rank file per TP rank, or per (PP, TP) rank pair with GPTModelPipe
    tp = int(getattr(args, "tensor_model_parallel_size", 0) or len(rank_files))
    job = mdsu.schedule_from_args(mlm.job_from_args(mdsu.mds_args(args)), args)
    cfg = job.model
    layer_files = [f for f in os.listdir(d) if re.fullmatch(r"layer_\d+-model_\d+-model_states\.pt", f)]
    shards: list[dict[str, torch.Tensor]] = []
    for r in range(tp):
        if layer_files:
            sd = _pipeline_rank(d, r, cfg)
        else:
            module = states[r].get("module") or {}
            sd = {mlm.canonical(k.removeprefix("module.")): v for k, v in mlm._flatten(module).items()
                  if torch.is_tensor(v)}
        if qkv_layout == "blocks":
            sd = {k: _qkv_to_groups(cfg, v, tp) if _is_qkv(k) else v for k, v in sd.items()}
        shards.append(sd)
    full = {k: v.float() for k, v in mlm._merge_tp(cfg, shards, 3.0).items()
            if not (k == "output_layer.weight" and cfg.tie_embeddings)}
    iteration = int(states[0].get("iteration", 0))
    consumed = int(getattr(args, "consumed_train_samples", 0) or 0)
    pp = int(getattr(args, "pipeline_model_parallel_size", 1) or 1) if layer_files else 1
    job.parallel.tensor_parallel, job.parallel.pipeline_parallel = tp, pp
    module = mlm.to_ours(cfg, full)
    rng = mdsu.rng_from_mds(states[0].get("rng_state")) if load_optim else None
    return job, FullState(module=module, client_state={
        "iteration": iteration, "consumed_samples": consumed, **({"rng": rng} if rng else {}),
        "imported_from": f"megatron-deepspeed {d} (TP{tp} x PP{pp})"})


def _pipeline_rank(d: str, r: int, cfg) -> dict[str, torch.Tensor]:
    """One TP rank's tensors from GPTModelPipe's per-layer files, under canonical names."""
    L = cfg.num_layers
    out: dict[str, torch.Tensor] = {}
    for name in os.listdir(d):
        m = re.fullmatch(r"layer_(\d+)-model_(\d+)-model_states\.pt", name)
        if not m or int(m[2]) != r:
            continue
        idx = int(m[1])
        sd = torch.load(os.path.join(d, name), map_location="cpu", weights_only=False)
        for k, v in sd.items():
            if idx == 1:
                out[f"embedding.{k}"] = v
            elif 2 <= idx < 2 + L:
                out[mlm.canonical(f"decoder.layers.{idx - 2}.{k}")] = v
            elif idx == 2 + L:
                out[f"decoder.final_layernorm.{k}"] = v
            elif k in ("lm_head.weight", "word_embeddings.weight"):
                out["output_layer.weight"] = v
    return out


# --------------------------------------------------------------------------------------------- writing
def mds_namespace(job: JobConfig, tp: int, pp: int, iteration: int, consumed: int):
    """The args Namespace Megatron-DeepSpeed saves, in its own spelling (its loader's check_checkpoint_args reads
    num_key_value_heads and add_position_embedding; normalization is lower case)."""
    m = job.model
    args = mlm.args_from_job(job, tp, pp, iteration, consumed)
    args.deepspeed, args.no_pipeline_parallel, args.use_mcore_models = True, pp == 1, False
    args.normalization, args.layernorm_epsilon = m.norm, m.norm_eps
    args.num_key_value_heads = m.num_kv_heads or m.num_attention_heads
    args.use_rotary_position_embeddings = m.position_embedding == "rope"
    args.rope_theta = int(m.rotary_base)
    args.consumed_train_tokens = consumed * job.data.seq_length
    return args


def write_megatron_deepspeed(job: JobConfig, sd: dict[str, torch.Tensor], save_dir: str, tp: int = 1, pp: int = 1,
                             iteration: int = 0, consumed: int = 0, qkv_layout: str = "blocks",
                             dtype: torch.dtype = torch.float32, optim: FullState | None = None) -> str:
    """Write Megatron-DeepSpeed's layout: mp_rank files with a 'module' (PP 1, as --no-pipeline-parallel) or
    GPTModelPipe's per-layer files (PP > 1; the stage split is DeepSpeed's to choose at load time). With `optim`
    (a FullState holding Adam moments) also SAVE/global_stepN_universal, which their --universal-checkpoint loads
    with the optimizer state at any TP x PP."""
    cfg = job.model
    if os.path.isdir(save_dir) and os.listdir(save_dir):
        raise MegatronCheckpointError(f"--save {save_dir} is not empty: choose a new directory")
    full = {k: v.to(dtype) for k, v in mlm.from_ours(cfg, sd).items()}
    shards = mlm._split_tp(cfg, full, tp)
    if qkv_layout == "blocks":
        shards = [{k: _qkv_to_blocks(cfg, v, tp) if _is_qkv(k) else v for k, v in s.items()} for s in shards]
    tag = f"global_step{iteration}"
    staged = os.path.join(save_dir, ".staging", tag)
    os.makedirs(staged)
    args = mds_namespace(job, tp, pp, iteration, consumed)
    L = cfg.num_layers
    for r, shard in enumerate(shards):
        client = {"args": args, "checkpoint_version": 3.0, "iteration": iteration,
                  "tokens": consumed * job.data.seq_length, "global_steps": iteration, "mp_world_size": tp,
                  "dp_world_size": 1}
        if pp == 1:
            module = {_legacy(k): v for k, v in shard.items()
                      if not (k == "output_layer.weight" and cfg.tie_embeddings)}
            torch.save({"module": module, **client}, os.path.join(staged, dsc.model_states_file(r)))
            continue
        layers: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in shard.items():
            if k.startswith("embedding."):
                layers.setdefault(1, {})[k.removeprefix("embedding.")] = v
            elif k.startswith("decoder.layers."):
                i, rest = k.removeprefix("decoder.layers.").split(".", 1)
                layers.setdefault(2 + int(i), {})[_legacy("decoder.layers.0." + rest).split(".", 4)[4]] = v
            elif k.startswith("decoder.final_layernorm."):
                layers.setdefault(2 + L, {})[k.removeprefix("decoder.final_layernorm.")] = v
            elif k == "output_layer.weight":
                layers.setdefault(3 + L, {})["word_embeddings.weight" if cfg.tie_embeddings else "lm_head.weight"] = v
        for idx, tensors in layers.items():
            torch.save(tensors, os.path.join(staged, dsc.layer_file(idx, r)))
        for stage in range(pp):  # DeepSpeed's pipeline engine keeps one file per model-parallel rank pp x TP + tp
            torch.save({"module": None, **client, "mp_world_size": tp * pp},
                       os.path.join(staged, dsc.model_states_file(stage * tp + r)))
    final = atomic.publish_tag(save_dir, staged, tag, {"latest": tag, mlm.TRACKER: str(iteration)})
    shutil.rmtree(os.path.join(save_dir, ".staging"), ignore_errors=True)
    if optim is not None and optim.exp_avg is not None:
        from .megatron_deepspeed_universal import write_megatron_deepspeed_universal

        write_megatron_deepspeed_universal(job, optim, save_dir, pp > 1, args, iteration, consumed)
    return final
