"""Megatron-LM checkpoints ("--ckpt-format torch", the legacy per-rank layout) <-> ours.

Megatron-LM's layout (megatron/training/checkpointing.py):

    DIR/latest_checkpointed_iteration.txt          "1000" (or "release")
    DIR/iter_0001000/mp_rank_{tp:02d}/model_optim_rng.pt            (PP = 1)
    DIR/iter_0001000/mp_rank_{tp:02d}_{pp:03d}/model_optim_rng.pt   (PP > 1)

Each file is a dict with 'args' (the run's argparse.Namespace: the model shape, padded_vocab_size, consumed
samples), 'checkpoint_version' (3.0), 'iteration' and 'model' (that rank's tensors; pipeline stages number their
layers from 0). Three key namings are read: Megatron-Core with the local layer spec (``decoder.layers.N.
input_layernorm``, ``self_attention.linear_qkv``, ...), Megatron-Core with Transformer Engine (norms fused into the
next linear: ``linear_qkv.layer_norm_weight``, ``linear_fc1.layer_norm_weight``), and the legacy model
(``language_model.encoder.layers.N.self_attention.query_key_value``, ...). The local-spec naming is written.

Tensor parallelism (Megatron's ColumnParallelLinear / RowParallelLinear / VocabParallelEmbedding): split along
dim 0: word embeddings, output layer, linear_qkv (weight and bias), linear_fc1; along dim 1: linear_proj.weight,
linear_fc2.weight; norms, position embeddings and the row-parallel biases are replicated. Fused QKV rows, per TP
shard, are per query group ``[q of the group's heads, k, v]`` x head_dim (checkpoint_version 3.0; versions 0 and
1.0 of multi-head checkpoints are reordered as Megatron's fix_query_key_value_ordering does). SwiGLU's
linear_fc1 rows, per TP shard, are ``[gate; up]`` (Megatron applies silu to the first half).

What is converted: weights (exactly; the embedding keeps Megatron's padded vocabulary rows), the iteration and the
consumed samples, and (convert/megatron_lm_state.py) the Adam state of Megatron-Core's non-distributed and
distributed optimizers (fp32 masters of bf16/fp16 runs included) and the RNG states, so a converted run continues
at the same step, data position and optimizer state.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import time
from typing import Any

import torch

from ..config.base import ConfigError
from ..config.job import JobConfig
from ..parallel.reshard import FULL_FILE, FullState, save_full_file
from ..utils import atomic

CHECKPOINT_VERSION = 3.0
TRACKER = "latest_checkpointed_iteration.txt"


class MegatronCheckpointError(ConfigError):
    """A Megatron checkpoint cannot be read or written as asked; the message names the fix."""


# --------------------------------------------------------------------------------------------- key names
# foreign -> canonical (Megatron-Core, local spec), applied in order
_RENAMES = [
    (r"^language_model\.embedding\.", "embedding."),
    (r"^language_model\.encoder\.layers\.", "decoder.layers."),
    (r"^language_model\.encoder\.final_(norm|layernorm)\.", "decoder.final_layernorm."),
    (r"^language_model\.output_layer\.", "output_layer."),
    (r"^word_embeddings_for_head\.", "output_layer."),
    (r"\.input_norm\.", ".input_layernorm."),
    (r"\.post_attention_(norm|layernorm)\.", ".pre_mlp_layernorm."),
    (r"\.self_attention\.query_key_value\.", ".self_attention.linear_qkv."),
    (r"\.self_attention\.dense\.", ".self_attention.linear_proj."),
    (r"\.mlp\.dense_h_to_4h\.", ".mlp.linear_fc1."),
    (r"\.mlp\.dense_4h_to_h\.", ".mlp.linear_fc2."),
    (r"\.self_attention\.linear_qkv\.layer_norm_(weight|bias)$", r".input_layernorm.\1"),  # Transformer Engine
    (r"\.mlp\.linear_fc1\.layer_norm_(weight|bias)$", r".pre_mlp_layernorm.\1"),
]
_DIM0 = ("embedding.word_embeddings.weight", "output_layer.weight")
_DIM0_LAYER = (".self_attention.linear_qkv.weight", ".self_attention.linear_qkv.bias", ".mlp.linear_fc1.weight",
               ".mlp.linear_fc1.bias")
_DIM1_LAYER = (".self_attention.linear_proj.weight", ".mlp.linear_fc2.weight")


def canonical(key: str) -> str:
    for pattern, repl in _RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def tp_dim(key: str) -> int | None:
    if key in _DIM0 or key.endswith(_DIM0_LAYER):
        return 0
    if key.endswith(_DIM1_LAYER):
        return 1
    return None


# --------------------------------------------------------------------------------------------- config
def job_from_args(args: argparse.Namespace) -> JobConfig:
    """Our JobConfig for the model a Megatron run's saved args describe (other sections: Megatron's values)."""
    from ..config.cli import MEGATRON_DEFAULTS

    job = JobConfig()
    job.update(MEGATRON_DEFAULTS)
    g = lambda name, default=None: getattr(args, name, default)  # noqa: E731
    heads = g("num_attention_heads")
    m = job.model
    m.num_layers, m.hidden_size, m.num_attention_heads = g("num_layers"), g("hidden_size"), heads
    m.num_kv_heads = g("num_query_groups") if g("group_query_attention") else None
    m.head_dim = g("kv_channels") if g("kv_channels") and g("kv_channels") != g("hidden_size") // heads else None
    ffn = g("ffn_hidden_size")
    m.ffn_hidden_size = None if ffn in (None, 4 * g("hidden_size")) else ffn  # 4h: the default on both sides
    m.max_position_embeddings = g("max_position_embeddings")
    pos = g("position_embedding_type", "learned_absolute")
    m.position_embedding = {"learned_absolute": "learned", "rope": "rope", "none": "none"}.get(pos)
    if m.position_embedding is None:
        raise MegatronCheckpointError(f"position_embedding_type {pos!r} is not supported (learned_absolute, rope)")
    if g("use_rotary_position_embeddings"):  # Megatron-DeepSpeed's switch
        m.position_embedding = "rope"
    m.rotary_percent = float(g("rotary_percent", 1.0) or 1.0)
    m.rotary_base = float(g("rotary_base", 10000) or 10000)
    if g("rotary_interleaved"):
        raise MegatronCheckpointError("rotary_interleaved checkpoints are not supported (half-split RoPE only)")
    m.activation = "swiglu" if g("swiglu") else ("gelu_tanh" if g("openai_gelu") else "gelu")
    if g("squared_relu") or g("onnx_safe"):
        raise MegatronCheckpointError("only GELU and SwiGLU MLPs are supported")
    norm = g("normalization", "LayerNorm")
    m.norm = {"LayerNorm": "layernorm", "RMSNorm": "rmsnorm"}[norm]
    m.norm_eps = float(g("norm_epsilon", g("layernorm_epsilon", 1e-5)))
    m.norm_zero_centered = bool(g("apply_layernorm_1p", False))  # gains stored as w, applied as 1 + w: kept as is
    m.bias = bool(g("add_bias_linear", True))
    m.tie_embeddings = not g("untie_embeddings_and_output_weights", False)
    m.vocab_size, m.vocab_pad_multiple = _vocab(args)
    m.attention_dropout = float(g("attention_dropout", 0.1))
    m.hidden_dropout = m.embedding_dropout = float(g("hidden_dropout", 0.1))
    m.init_std = float(g("init_method_std", 0.02))
    job.data.seq_length = int(g("seq_length", m.max_position_embeddings))
    t = job.training
    t.micro_batch_size = int(g("micro_batch_size", 1))
    t.global_batch_size = g("global_batch_size")
    t.seed = int(g("seed", 1234))
    t.precision = "bf16" if g("bf16") else "fp16" if g("fp16") else "fp32"
    o = job.optim
    o.lr = float(g("lr", o.lr) or o.lr)
    o.min_lr = float(g("min_lr", 0.0) or 0.0)
    # the rest of the optimizer and schedule, so an imported run's Adam state continues on Megatron's settings
    for ours, theirs in (("weight_decay", "weight_decay"), ("adam_beta1", "adam_beta1"), ("adam_beta2", "adam_beta2"),
                         ("adam_eps", "adam_eps"), ("clip_grad", "clip_grad")):
        if g(theirs) is not None:
            setattr(o, ours, float(g(theirs)))
    if g("lr_decay_style") in ("constant", "linear", "cosine", "inverse-square-root"):  # WSD: its own lengths
        o.lr_decay_style = g("lr_decay_style")
    for ours, theirs in (("lr_warmup_iters", "lr_warmup_iters"), ("lr_decay_iters", "lr_decay_iters")):
        if g(theirs):
            setattr(o, ours, int(g(theirs)))
    if g("lr_warmup_fraction"):
        o.lr_warmup_fraction = float(g("lr_warmup_fraction"))
    if g("train_iters"):
        t.train_iters = int(g("train_iters"))
    return job


def _vocab(args) -> tuple[int, int]:
    """(vocab_size, vocab_pad_multiple) giving exactly Megatron's padded_vocab_size rows: the true size when the
    args record it (Megatron pads to make_vocab_size_divisible_by x TP), else the padded size itself."""
    padded = int(args.padded_vocab_size)
    true = getattr(args, "vocab_size", None)
    if true:
        div = int(getattr(args, "make_vocab_size_divisible_by", 128) or 1)
        for mult in (128, div, div * int(getattr(args, "tensor_model_parallel_size", 1) or 1)):
            if -(-int(true) // mult) * mult == padded:
                return int(true), mult
    return padded, 1


def args_from_job(job: JobConfig, tp: int, pp: int, iteration: int, consumed: int) -> argparse.Namespace:
    """The args Namespace Megatron-LM saves (the fields its loader and converters read)."""
    m = job.model
    heads = m.num_attention_heads
    return argparse.Namespace(
        num_layers=m.num_layers, hidden_size=m.hidden_size, ffn_hidden_size=m.ffn_hidden_size,
        num_attention_heads=heads,
        group_query_attention=m.num_kv_heads != heads, num_query_groups=m.num_kv_heads, kv_channels=m.head_dim,
        max_position_embeddings=m.max_position_embeddings, seq_length=job.data.seq_length,
        position_embedding_type={"learned": "learned_absolute", "rope": "rope", "none": "none"}[m.position_embedding],
        add_position_embedding=m.position_embedding != "none",  # Megatron's flag (off: --no-position-embedding); the
        # embedding's type is position_embedding_type, and check_checkpoint_args compares this with the launch's
        rotary_percent=m.rotary_percent,
        rotary_base=int(m.rotary_base), rotary_interleaved=False, swiglu=m.activation == "swiglu",
        openai_gelu=m.activation == "gelu_tanh", normalization={"layernorm": "LayerNorm", "rmsnorm": "RMSNorm"}[m.norm],
        norm_epsilon=m.norm_eps, apply_layernorm_1p=m.norm_zero_centered, add_bias_linear=m.bias, add_qkv_bias=m.bias,
        untie_embeddings_and_output_weights=not m.tie_embeddings, padded_vocab_size=m.padded_vocab_size,
        make_vocab_size_divisible_by=m.vocab_pad_multiple, vocab_size=m.vocab_size,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, virtual_pipeline_model_parallel_size=None,
        attention_dropout=m.attention_dropout, hidden_dropout=m.hidden_dropout, init_method_std=m.init_std,
        micro_batch_size=job.training.micro_batch_size, global_batch_size=job.training.global_batch_size,
        bf16=job.training.precision == "bf16", fp16=job.training.precision == "fp16", seed=job.training.seed,
        lr=job.optim.lr, min_lr=job.optim.min_lr, iteration=iteration, consumed_train_samples=consumed,
        consumed_valid_samples=0, use_mcore_models=True, transformer_impl="local", ckpt_format="torch",
        tokenizer_type=job.data.tokenizer_type, tokenizer_model=job.data.tokenizer_model,
        vocab_file=job.data.vocab_file, merge_file=job.data.merge_file, weight_decay=job.optim.weight_decay,
        adam_beta1=job.optim.adam_beta1, adam_beta2=job.optim.adam_beta2, adam_eps=job.optim.adam_eps,
        clip_grad=job.optim.clip_grad, lr_decay_style=job.optim.lr_decay_style, train_iters=job.training.train_iters,
        lr_warmup_iters=job.optim.lr_warmup_iters, lr_decay_iters=job.optim.lr_decay_iters,
        decoupled_lr=job.optim.decoupled_lr, decoupled_min_lr=job.optim.decoupled_min_lr)


# --------------------------------------------------------------------------------------------- our <-> canonical
def _groups(cfg) -> tuple[int, int, int]:
    heads = cfg.num_attention_heads
    groups = cfg.num_kv_heads
    return groups, heads // groups, cfg.head_dim


def to_ours(cfg, full: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Canonical full (TP-merged) Megatron tensors -> our GPT state dict."""
    out: dict[str, torch.Tensor] = {"embed.word.weight": full["embedding.word_embeddings.weight"]}
    if "embedding.position_embeddings.weight" in full:
        out["embed.position.weight"] = full["embedding.position_embeddings.weight"]
    ng, qpg, d = _groups(cfg)
    for i in range(cfg.num_layers):
        src, dst = f"decoder.layers.{i}.", f"layers.{i}."
        for a, b in (("input_layernorm", "norm1"), ("pre_mlp_layernorm", "norm2")):
            for p in ("weight", "bias"):
                if src + f"{a}.{p}" in full:
                    out[dst + f"{b}.{p}"] = full[src + f"{a}.{p}"]
        for p in ("weight", "bias"):
            qkv = full.get(src + f"self_attention.linear_qkv.{p}")
            if qkv is None:
                continue
            qkv = qkv.reshape(ng, qpg + 2, d, *qkv.shape[1:])
            out[dst + f"attn.q_proj.{p}"] = qkv[:, :qpg].reshape(ng * qpg * d, *qkv.shape[3:])
            out[dst + f"attn.k_proj.{p}"] = qkv[:, qpg].reshape(ng * d, *qkv.shape[3:])
            out[dst + f"attn.v_proj.{p}"] = qkv[:, qpg + 1].reshape(ng * d, *qkv.shape[3:])
            if src + f"self_attention.linear_proj.{p}" in full:
                out[dst + f"attn.o_proj.{p}"] = full[src + f"self_attention.linear_proj.{p}"]
            fc1, fc2 = full.get(src + f"mlp.linear_fc1.{p}"), full.get(src + f"mlp.linear_fc2.{p}")
            if cfg.activation == "swiglu":
                gate, up = fc1.chunk(2, dim=0)  # merged over TP by _merge_fc1 into [gate; up]
                out[dst + f"mlp.gate_proj.{p}"], out[dst + f"mlp.up_proj.{p}"] = gate, up
                out[dst + f"mlp.down_proj.{p}"] = fc2
            else:
                out[dst + f"mlp.fc_in.{p}"], out[dst + f"mlp.fc_out.{p}"] = fc1, fc2
    for p in ("weight", "bias"):
        if f"decoder.final_layernorm.{p}" in full:
            out[f"final_norm.{p}"] = full[f"decoder.final_layernorm.{p}"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = full["output_layer.weight"]
    return out


def from_ours(cfg, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our GPT state dict -> canonical full Megatron tensors (fc1 as [gate; up] over the whole width)."""
    full = {"embedding.word_embeddings.weight": sd["embed.word.weight"]}
    if "embed.position.weight" in sd:
        full["embedding.position_embeddings.weight"] = sd["embed.position.weight"]
    ng, qpg, d = _groups(cfg)
    for i in range(cfg.num_layers):
        src, dst = f"layers.{i}.", f"decoder.layers.{i}."
        for a, b in (("input_layernorm", "norm1"), ("pre_mlp_layernorm", "norm2")):
            for p in ("weight", "bias"):
                if src + f"{b}.{p}" in sd:
                    full[dst + f"{a}.{p}"] = sd[src + f"{b}.{p}"]
        for p in ("weight", "bias"):
            if src + f"attn.q_proj.{p}" not in sd:
                continue
            q = sd[src + f"attn.q_proj.{p}"].reshape(ng, qpg, d, *sd[src + f"attn.q_proj.{p}"].shape[1:])
            k = sd[src + f"attn.k_proj.{p}"].reshape(ng, 1, d, *q.shape[3:])
            v = sd[src + f"attn.v_proj.{p}"].reshape(ng, 1, d, *q.shape[3:])
            full[dst + f"self_attention.linear_qkv.{p}"] = torch.cat([q, k, v], dim=1).reshape(-1, *q.shape[3:])
            full[dst + f"self_attention.linear_proj.{p}"] = sd[src + f"attn.o_proj.{p}"]
            if cfg.activation == "swiglu":
                full[dst + f"mlp.linear_fc1.{p}"] = torch.cat([sd[src + f"mlp.gate_proj.{p}"],
                                                               sd[src + f"mlp.up_proj.{p}"]])
                full[dst + f"mlp.linear_fc2.{p}"] = sd[src + f"mlp.down_proj.{p}"]
            else:
                full[dst + f"mlp.linear_fc1.{p}"] = sd[src + f"mlp.fc_in.{p}"]
                full[dst + f"mlp.linear_fc2.{p}"] = sd[src + f"mlp.fc_out.{p}"]
    for p in ("weight", "bias"):
        if f"final_norm.{p}" in sd:
            full[f"decoder.final_layernorm.{p}"] = sd[f"final_norm.{p}"]
    full["output_layer.weight"] = sd["embed.word.weight"] if cfg.tie_embeddings else sd["lm_head.weight"]
    return full


# --------------------------------------------------------------------------------------------- TP merge / split
def _fix_qkv_version(t: torch.Tensor, version: float, heads_local: int, d: int) -> torch.Tensor:
    """Multi-head QKV of checkpoint versions 0 ([3, np, hn]) and 1.0 ([np, hn, 3]) -> version 2.0/3.0 order."""
    if version >= 2.0:
        return t
    rest = t.shape[1:]
    if version == 0:
        return t.reshape(3, heads_local, d, *rest).transpose(0, 1).reshape(-1, *rest).contiguous()
    return t.reshape(heads_local, d, 3, *rest).transpose(1, 2).reshape(-1, *rest).contiguous()


def _merge_tp(cfg, shards: list[dict[str, torch.Tensor]], version: float) -> dict[str, torch.Tensor]:
    tp = len(shards)
    out = {}
    for key in shards[0]:
        dim = tp_dim(key)
        parts = [s[key] for s in shards]
        if dim is None:
            out[key] = parts[0]
            continue
        if key.endswith(".self_attention.linear_qkv.weight") or key.endswith(".self_attention.linear_qkv.bias"):
            parts = [_fix_qkv_version(p, version, cfg.num_attention_heads // tp, _groups(cfg)[2]) for p in parts]
        if cfg.activation == "swiglu" and ".mlp.linear_fc1." in key:  # per shard [gate; up]
            halves = [p.chunk(2, dim=0) for p in parts]
            out[key] = torch.cat([torch.cat([h[0] for h in halves]), torch.cat([h[1] for h in halves])])
            continue
        out[key] = torch.cat(parts, dim=dim)
    return out


def _split_tp(cfg, full: dict[str, torch.Tensor], tp: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(tp)]
    for key, t in full.items():
        dim = tp_dim(key)
        if dim is None:
            pieces = [t] * tp
        elif cfg.activation == "swiglu" and ".mlp.linear_fc1." in key:
            gate, up = t.chunk(2, dim=0)
            pieces = [torch.cat([g, u]) for g, u in zip(gate.chunk(tp), up.chunk(tp))]
        else:
            if t.shape[dim] % tp:
                raise MegatronCheckpointError(f"{key} ({tuple(t.shape)}) does not split into {tp} tensor-parallel "
                                              f"shards")
            pieces = list(t.chunk(tp, dim=dim))
        for r in range(tp):
            shards[r][key] = pieces[r].clone().contiguous()
    return shards


# --------------------------------------------------------------------------------------------- reading
def _tracker_tag(load_dir: str) -> tuple[str, int]:
    path = os.path.join(load_dir, TRACKER)
    if not os.path.isfile(path):
        raise MegatronCheckpointError(f"{load_dir} has no {TRACKER}: not a Megatron-LM checkpoint directory (give "
                                      f"the directory passed to Megatron's --save)")
    text = open(path).read().strip()
    if text == "release":
        return "release", 0
    try:
        it = int(text)
    except ValueError:
        raise MegatronCheckpointError(f"{path} holds {text!r}, not an iteration number") from None
    return f"iter_{it:07d}", it


def _rank_files(tag_dir: str) -> dict[tuple[int, int], str]:
    files = {}
    for name in os.listdir(tag_dir):
        m = re.fullmatch(r"mp_rank_(\d{2})(?:_(\d{3}))?", name)
        if m and os.path.isfile(os.path.join(tag_dir, name, "model_optim_rng.pt")):
            files[(int(m[1]), int(m[2] or 0))] = os.path.join(tag_dir, name, "model_optim_rng.pt")
    if not files:
        if any(f.endswith(".distcp") for f in os.listdir(tag_dir)):
            raise MegatronCheckpointError(f"{tag_dir} is a distributed checkpoint without torch_dist's metadata.json "
                                          f"(another backend, e.g. zarr): re-save it with --ckpt-format torch_dist")
        raise MegatronCheckpointError(f"{tag_dir} holds no mp_rank_XX[_YYY]/model_optim_rng.pt files")
    return files


def read_megatron_lm(load_dir: str, weights_only: bool = False) -> tuple[JobConfig, FullState]:
    """(our job config, our full state) from a Megatron-LM checkpoint of any TP x PP layout; `weights_only`: leave
    the optimizer state out (legacy format)."""
    tag, _ = _tracker_tag(load_dir)
    tag_dir = os.path.join(load_dir, tag)
    if not os.path.isdir(tag_dir):
        raise MegatronCheckpointError(f"{TRACKER} names {tag} but {tag_dir} is missing")
    from . import megatron_torch_dist as mtd

    if mtd.is_torch_dist(tag_dir):
        common, full, optim = mtd.read_torch_dist(tag_dir)
        if "fp32_param" in optim:  # a bf16/fp16 run: its fp32 masters are the weights
            full = {**full, **optim["fp32_param"]}
        job, state = _from_full(common, full, tag_dir, "torch_dist")
        if "exp_avg" in optim and "exp_avg_sq" in optim:
            for s in ("exp_avg", "exp_avg_sq"):
                if job.model.tie_embeddings:
                    optim[s].pop("output_layer.weight", None)
                setattr(state, s, to_ours(job.model, optim[s]))
            step = mtd.common_step(common)
            state.step = int(step) if step is not None else None
        mtd.attach_rng(tag_dir, state.client_state)
        return job, state
    files = _rank_files(tag_dir)
    tp = 1 + max(r for r, _ in files)
    pp = 1 + max(s for _, s in files)
    missing = [(r, s) for r in range(tp) for s in range(pp) if (r, s) not in files]
    if missing:
        raise MegatronCheckpointError(f"{tag_dir} lacks the files of (tp, pp) ranks {missing}: incomplete checkpoint")
    first = torch.load(files[(0, 0)], map_location="cpu", weights_only=False)
    args = first.get("args")
    if args is None:
        raise MegatronCheckpointError(f"{files[(0, 0)]} has no 'args': cannot tell the model's shape")
    job = job_from_args(args)
    cfg = job.model
    version = float(first.get("checkpoint_version", 0))
    if version < 2.0 and cfg.num_kv_heads not in (None, cfg.num_attention_heads):
        raise MegatronCheckpointError(f"checkpoint_version {version} with grouped-query attention is not a layout "
                                      f"Megatron wrote")
    from . import megatron_lm_state as mls

    loaded = {(0, 0): first}
    models, params = {}, {}
    for rs in sorted(files):
        sd = loaded.get(rs) or torch.load(files[rs], map_location="cpu", weights_only=False)
        loaded[rs] = sd
        model = sd.get("model", sd.get("model0"))
        if model is None:
            raise MegatronCheckpointError(f"{files[rs]} has no 'model' (interleaved virtual pipelines are not "
                                          f"supported)")
        flat = {k: v for k, v in _flatten(model).items() if torch.is_tensor(v) and not k.endswith("_extra_state")}
        models[rs] = flat
        params[rs] = [(k, v.shape, canonical(k)) for k, v in flat.items()]  # named_parameters() order
    full, layers = _gather(cfg, {rs: {canonical(k): v for k, v in m.items()} for rs, m in models.items()}, tp, pp,
                           version)
    if layers != cfg.num_layers:
        raise MegatronCheckpointError(f"found {layers} layers over {pp} stages, the args say {cfg.num_layers}")
    job.parallel.tensor_parallel, job.parallel.pipeline_parallel = tp, pp
    optim: dict[str, dict] = {}
    keys = mls.group_keys(list(params.values()), args)
    per_rank = {rs: None if weights_only else mls.read_rank(files[rs], loaded[rs], params[rs], keys, args)
                for rs in files}
    if all(v is not None for v in per_rank.values()):
        steps = {v["step"] for v in per_rank.values()}
        if len(steps) != 1:
            raise MegatronCheckpointError(f"{tag_dir}: the ranks' Adam steps differ ({sorted(steps)})")
        for kind in ("exp_avg", "exp_avg_sq", "param"):
            if per_rank[(0, 0)][kind] is not None:
                optim[kind] = _gather(cfg, {rs: {canonical(k): t for k, t in v[kind].items()}
                                            for rs, v in per_rank.items()}, tp, pp, version)[0]
        optim["step"] = steps.pop()
    if "param" in optim:  # a bf16/fp16 run: its fp32 masters are the weights
        full = optim["param"]
    job_state = _from_full(first, full, tag_dir, f"TP{tp} x PP{pp}", job)
    state = job_state[1]
    if optim:
        state.exp_avg, state.exp_avg_sq = (to_ours(cfg, optim[s]) for s in ("exp_avg", "exp_avg_sq"))
        state.step = optim["step"]
    rng = {rs: loaded[rs].get("rng_state") for rs in files}
    if rng[(0, 0)]:
        state.client_state["rng"] = mls.rng_to_ours(rng[(0, 0)])
        state.client_state["megatron_rng"] = {f"{r},{s}": v for (r, s), v in rng.items()}
    return job_state


def _gather(cfg, per_rank: dict[tuple[int, int], dict[str, torch.Tensor]], tp: int, pp: int,
            version: float) -> tuple[dict[str, torch.Tensor], int]:
    """Canonical full tensors (fp32) from each (tp, pp) rank's canonical tensors: TP shards merged, stage-local layer
    numbers made global, the last stage's copy of a tied embedding dropped. Returns (tensors, layers found)."""
    full: dict[str, torch.Tensor] = {}
    layer_offset = 0
    for s in range(pp):
        merged = _merge_tp(cfg, [per_rank[(r, s)] for r in range(tp)], version)
        n_local = 1 + max((int(k.split(".")[2]) for k in merged if k.startswith("decoder.layers.")), default=-1)
        for k, v in merged.items():
            if k.startswith("decoder.layers."):
                parts = k.split(".")
                parts[2] = str(int(parts[2]) + layer_offset)
                k = ".".join(parts)
            if k == "output_layer.weight" and cfg.tie_embeddings:
                continue  # the last stage's copy of the tied embedding
            full[k] = v.float()
        layer_offset += n_local
    return full, layer_offset


def _from_full(common: dict, full: dict[str, torch.Tensor], tag_dir: str, layout: str,
               job: JobConfig | None = None) -> tuple[JobConfig, FullState]:
    """(job, state) from a checkpoint's common part (args, iteration) and its canonical full tensors."""
    args = common.get("args")
    if args is None:
        raise MegatronCheckpointError(f"{tag_dir} has no 'args': cannot tell the model's shape")
    if job is None:
        job = job_from_args(args)
        job.parallel.tensor_parallel = int(getattr(args, "tensor_model_parallel_size", 1) or 1)
        job.parallel.pipeline_parallel = int(getattr(args, "pipeline_model_parallel_size", 1) or 1)
    if job.model.tie_embeddings:
        full.pop("output_layer.weight", None)  # the last stage's copy of the tied embedding
    consumed = int(getattr(args, "consumed_train_samples", 0) or 0)
    state = FullState(module=to_ours(job.model, full), step=None,
                      client_state={"iteration": int(common.get("iteration", 0)), "consumed_samples": consumed,
                                    "imported_from": f"megatron-lm {tag_dir} ({layout})"})
    return job, state


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Legacy checkpoints nest: {'language_model': {'embedding': {...}, 'encoder': {...}}}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def write_ours(job: JobConfig, state: FullState, save_dir: str) -> str:
    """Our checkpoint (layout-free full_state.pt + config.yaml + meta.json + latest) from a FullState; loads at
    any TP x PP x ZeRO layout (training/checkpoint.py). Returns the tag directory."""
    import json

    from ..training.checkpoint import tag_for

    if os.path.isdir(save_dir) and os.listdir(save_dir):
        raise MegatronCheckpointError(f"--save {save_dir} is not empty: choose a new directory")
    job.model.validate()
    tag = tag_for(int(state.client_state.get("iteration", 0)))
    staged = os.path.join(save_dir, ".staging", tag)
    os.makedirs(staged)
    state.client_state["layout"] = {"tp": job.parallel.tensor_parallel, "pp": job.parallel.pipeline_parallel,
                                    "zero": job.parallel.zero_stage, "format": "full"}
    save_full_file(os.path.join(staged, FULL_FILE), state)
    job.save(os.path.join(staged, "config.yaml"))
    meta = {"iteration": state.client_state.get("iteration"), "consumed_samples":
            state.client_state.get("consumed_samples"), "tokenizer_fingerprint": None,
            "layout": state.client_state["layout"], "has_optimizer": state.exp_avg is not None, "time": time.time(),
            "imported_from": state.client_state.get("imported_from")}
    with open(os.path.join(staged, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
    final = atomic.publish_tag(save_dir, staged, tag)
    shutil.rmtree(os.path.join(save_dir, ".staging"), ignore_errors=True)
    return final


# --------------------------------------------------------------------------------------------- writing
def check_exportable(cfg) -> None:
    if cfg.block != "sequential" or cfg.output_bias or (cfg.norm == "layernorm" and not cfg.norm_bias):
        raise MegatronCheckpointError("Megatron-LM's GPT has sequential blocks, no output bias and LayerNorm with "
                                      "bias: this model has no exact Megatron-LM equivalent")


def write_megatron_lm(job: JobConfig, sd: dict[str, torch.Tensor], save_dir: str, tp: int = 1, pp: int = 1,
                      iteration: int = 0, consumed: int = 0, dtype: torch.dtype | None = None,
                      optim: dict | None = None, step: int | None = None, client_state: dict | None = None,
                      distributed_optimizer: bool = False) -> str:
    """Write Megatron-LM's legacy layout (Megatron-Core local-spec key names) at TP `tp` x PP `pp`. `optim`
    ({"exp_avg", "exp_avg_sq": ours}) and `step`: Adam state, written as Megatron-Core's non-distributed optimizer
    (or, with `distributed_optimizer`, as its distributed one: distrib_optim.pt); `client_state`: our saved
    "rng"/"tp_rng" (or an imported run's "megatron_rng"), written as each rank's rng_state
    (convert/megatron_lm_state.py). The weights are written in the run's precision (bf16/fp16 with fp32 masters
    in the optimizer state) unless `dtype` says otherwise."""
    from . import megatron_lm_state as mls

    cfg = job.model
    if os.path.isdir(save_dir) and os.listdir(save_dir):
        raise MegatronCheckpointError(f"--save {save_dir} is not empty: choose a new directory")
    check_exportable(cfg)
    if cfg.num_layers % pp:
        raise MegatronCheckpointError(f"{cfg.num_layers} layers do not divide into {pp} pipeline stages")
    ng = cfg.num_kv_heads
    if ng % tp or cfg.num_attention_heads % tp:
        raise MegatronCheckpointError(f"{cfg.num_attention_heads} heads / {ng} query groups do not split over TP {tp}")
    precision = job.training.precision
    if dtype is None:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    if optim is not None and job.optim.decoupled_lr is not None:
        raise MegatronCheckpointError("--decoupled-lr runs: Megatron-Core 0.16 loads optimizer groups matched by "
                                      "(wd_mult, lr_mult, is_expert_parallel, is_decoupled_lr), which does not tell "
                                      "its decoupled groups apart; export without the optimizer state")
    if distributed_optimizer and optim is None:
        raise MegatronCheckpointError("--use-distributed-optimizer needs the run's Adam state, and this checkpoint has "
                                      "none")
    master = {k: v.float() for k, v in from_ours(cfg, sd).items()}
    stages = mls.stages(cfg, {k: v.to(dtype) for k, v in master.items()}, pp)
    half = precision in ("bf16", "fp16") or distributed_optimizer
    extra = {}
    if optim is not None:
        extra = {s: mls.stages(cfg, from_ours(cfg, optim[s]), pp) for s in ("exp_avg", "exp_avg_sq")}
        if half:
            extra["param"] = mls.stages(cfg, master, pp)
    tag = f"iter_{iteration:07d}"
    args = args_from_job(job, tp, pp, iteration, consumed)
    args.use_distributed_optimizer = distributed_optimizer
    args.data_parallel_size = 1
    staged = os.path.join(save_dir, ".staging")
    cs = client_state or {}
    shards = [_split_tp(cfg, stages[s], tp) for s in range(pp)]
    extras = {k: [_split_tp(cfg, v[s], tp) for s in range(pp)] for k, v in extra.items()}
    params = {(r, s): [(k, v.shape, k) for k, v in shards[s][r].items()] for s in range(pp) for r in range(tp)}
    keys = mls.group_keys(list(params.values()), args)
    for s in range(pp):
        for r, shard in enumerate(shards[s]):
            name = f"mp_rank_{r:02d}" if pp == 1 else f"mp_rank_{r:02d}_{s:03d}"
            d = os.path.join(staged, tag, name)
            os.makedirs(d, exist_ok=True)
            ck = {"args": args, "checkpoint_version": CHECKPOINT_VERSION, "iteration": iteration, "model": shard,
                  "num_floating_point_operations_so_far": 0}
            if optim is not None:
                moments = {k: extras[k][s][r] for k in ("exp_avg", "exp_avg_sq")}
                ck["optimizer"], distrib = mls.rank_optimizer(params[(r, s)], keys, args, job, moments,
                                                              extras["param"][s][r] if half else None, int(step or 0),
                                                              distributed_optimizer)
                ck["opt_param_scheduler"] = mls.scheduler_state(job, iteration)
                if distrib is not None:
                    torch.save(distrib, os.path.join(d, mls.DISTRIB_FILE))
            theirs = (cs.get("megatron_rng") or {}).get(f"{r},{s}")
            ck["rng_state"] = theirs if theirs else mls.rng_from_ours(cs.get("rng"), cs.get("tp_rng"),
                                                                       job.training.seed, r, s)
            torch.save(ck, os.path.join(d, "model_optim_rng.pt"))
    os.makedirs(save_dir, exist_ok=True)
    final = atomic.publish_tag(save_dir, os.path.join(staged, tag), tag, {TRACKER: str(iteration)})
    shutil.rmtree(staged, ignore_errors=True)
    return final
