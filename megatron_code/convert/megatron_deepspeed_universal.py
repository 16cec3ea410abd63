"""Megatron-DeepSpeed's optimizer state, both ways, through DeepSpeed universal checkpoints.

- Import: a ``global_stepN`` folder with ZeRO optimizer shards goes through DeepSpeed's own ``ds_to_universal``
  (``to_universal``), then the folder it writes is read here (weights = the fp32 masters, Adam moments, step).
- Export (``write_megatron_deepspeed_universal``): a universal folder with Megatron-DeepSpeed's parameter names, its
  ``args``/``universal_checkpoint_info``/``lr_scheduler`` client state, that their ``--universal-checkpoint``
  (DeepSpeed's ``load_universal_checkpoint``) loads at any TP x PP x DP.
- RNG: their ``rng_state`` <-> our ``rng`` (megatron_lm_state: the same entries as Megatron-LM's).

The folder (deepspeed/checkpoint/ds_to_universal.py) holds ``zero/<param>/{fp32,exp_avg,exp_avg_sq}.pt`` (each a
TP-merged tensor, ``{"param": t, ...}``) and ``step.pt``, plus the copied ``mp_rank_XX_model_states.pt`` whose client
state is Megatron-DeepSpeed's (``args``, ``iteration``, ``universal_checkpoint_info``). How the tool merged each
parameter follows Megatron-DeepSpeed's ``UniversalCheckpointInfo`` (megatron/model/gpt_model.py):

- names are GPTModelPipe's (``tied_modules.embed.word_embeddings.weight``, ``1.word_embeddings.weight`` when untied,
  ``{2+i}.self_attention.query_key_value.weight`` for layer i, ``{2+L}.weight`` the final norm,
  ``{3+L}.lm_head.weight``)
  or, without a pipeline, GPTModel's (``language_model.encoder.layers.i...``);
- norms, position embeddings and row-parallel biases are TP-replicated (one slice); ``dense`` and ``dense_4h_to_h``
  weights are concatenated along dim 1, everything else along dim 0;
- SwiGLU's ``dense_h_to_4h`` is listed under ``parameter_with_2_sub_params_cat_dim_0``: the tool merges the gate
  halves of all TP slices, then the up halves, giving ``[gate; up]`` over the whole width;
- the fused QKV is the plain concatenation of the TP slices, each ``[q; k; v]`` blocks (current Megatron-DeepSpeed,
  ``ParallelAttention.forward``): it is regrouped with the run's saved ``tensor_model_parallel_size``;
- vocabulary parameters keep Megatron's padded rows unless the info gives ``original_vocab_size`` (then they are
  padded back with zeros, as DeepSpeed pads them when loading).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import tempfile

import torch

from ..config.job import JobConfig
from ..parallel import deepspeed_compat as dsc
from ..parallel.reshard import FullState
from . import megatron_lm as mlm
from . import megatron_lm_state as mls
from .megatron_deepspeed import _qkv_to_groups

_STATES = ("fp32", "exp_avg", "exp_avg_sq")
_N_SUB, _SUB_SHAPE = "param_n_sub_params", "sub_param_shape"  # deepspeed.checkpoint.constants
_SWIGLU_INFO = "parameter_with_2_sub_params_cat_dim_0"


def mds_args(args):
    """Megatron-DeepSpeed's saved args in the spelling megatron_lm.job_from_args reads (Megatron-LM's): its
    normalization is lower case, positions are add_position_embedding / use_rotary_position_embeddings, RoPE's base
    is rope_theta."""
    a = argparse.Namespace(**vars(args))
    norm = getattr(a, "normalization", None)
    a.normalization = {"layernorm": "LayerNorm", "rmsnorm": "RMSNorm"}.get(norm, norm or "LayerNorm")
    if not hasattr(a, "position_embedding_type"):
        a.position_embedding_type = ("learned_absolute" if getattr(a, "add_position_embedding", True) else "none")
    if getattr(a, "rope_theta", None) and not getattr(a, "rotary_base", None):
        a.rotary_base = a.rope_theta
    return a


def schedule_from_args(job: JobConfig, args) -> JobConfig:
    """The run's optimizer and schedule flags (Megatron-DeepSpeed's defaults where absent), so a continued run
    follows them and an export's lr_scheduler state matches what their loader checks."""
    from ..config.optim import DECAY_STYLES

    o, g = job.optim, lambda name, default=None: getattr(args, name, default)  # noqa: E731
    if g("lr_decay_style") in DECAY_STYLES:
        o.lr_decay_style = g("lr_decay_style")
    o.lr_decay_iters, o.lr_warmup_iters = g("lr_decay_iters"), int(g("lr_warmup_iters", 0) or 0)
    o.weight_decay, o.clip_grad = float(g("weight_decay", 0.01)), float(g("clip_grad", 1.0))
    o.adam_beta1, o.adam_beta2, o.adam_eps = (float(g("adam_beta1", 0.9)), float(g("adam_beta2", 0.999)),
                                              float(g("adam_eps", 1e-8)))
    if g("train_iters"):
        job.training.train_iters = int(g("train_iters"))
    return job


def client_state(folder: str) -> dict | None:
    """The copied Megatron-DeepSpeed client state of a universal folder, or None if it is not one (ours carry a
    job config and no Megatron args)."""
    ranks = dsc.model_states_files(os.listdir(folder))
    if not ranks:
        return None
    sd = torch.load(os.path.join(folder, ranks[0]), map_location="cpu", weights_only=False)
    return sd if sd.get("args") is not None and not sd.get("job_config") else None


def canonical_name(name: str, num_layers: int) -> str | None:
    """Megatron-Core local-spec name of a GPTModelPipe / GPTModel parameter name (None: not a model parameter)."""
    m = re.fullmatch(r"tied_modules\.embed\.(word_embeddings|position_embeddings)\.weight", name)
    if m:
        return f"embedding.{m[1]}.weight"
    m = re.fullmatch(r"(\d+)\.(.+)", name)
    if not m:
        return mlm.canonical(name)
    idx, rest = int(m[1]), m[2]
    if idx == 1:
        return f"embedding.{rest}"
    if 2 <= idx < 2 + num_layers:
        return mlm.canonical(f"decoder.layers.{idx - 2}.{rest}")
    if idx == 2 + num_layers:
        return f"decoder.final_layernorm.{rest}"
    if rest in ("lm_head.weight", "word_embeddings.weight"):
        return "output_layer.weight"
    return None


def read_megatron_deepspeed_universal(folder: str, client: dict,
                                      qkv_layout: str = "blocks") -> tuple[JobConfig, FullState]:
    args = mds_args(client["args"])
    job = schedule_from_args(mlm.job_from_args(args), args)
    cfg = job.model
    tp = int(getattr(args, "tensor_model_parallel_size", 1) or 1)
    info = client.get("universal_checkpoint_info") or {}
    swiglu_merged = [p for p in info.get(_SWIGLU_INFO, [])]
    original_vocab = info.get("original_vocab_size")
    zero = os.path.join(folder, "zero")
    states: dict[str, dict[str, torch.Tensor]] = {s: {} for s in _STATES}
    step = None
    for name in sorted(os.listdir(zero)):
        d = os.path.join(zero, name)
        key = canonical_name(name, cfg.num_layers) if os.path.isdir(d) else None
        if key is None:
            continue
        for s in _STATES:
            f = os.path.join(d, f"{s}.pt")
            if not os.path.exists(f):
                continue
            entry = torch.load(f, map_location="cpu", weights_only=False)
            t = (entry["param"] if isinstance(entry, dict) else entry).float()
            if ".self_attention.linear_qkv." in key and qkv_layout == "blocks":
                # written by us: global [q; k; v] sub-parameters (loads at any TP); by ds_to_universal: the run's
                # TP slices, each [q_r; k_r; v_r], concatenated
                whole = isinstance(entry, dict) and (entry.get(_N_SUB) == 3 or entry.get(_SUB_SHAPE) is not None)
                n = 1 if whole else tp
                t = torch.cat([_qkv_to_groups(cfg, c, n) for c in t.chunk(n)])
            merged = any(re.match(p, name) for p in swiglu_merged) or (isinstance(entry, dict) and
                                                                        entry.get(_N_SUB) == 2)
            if ".mlp.linear_fc1." in key and cfg.activation == "swiglu" and not merged:  # slices [gate_r; up_r]
                halves = [c.chunk(2) for c in t.chunk(tp)]
                t = torch.cat([h[0] for h in halves] + [h[1] for h in halves])
            if key in ("embedding.word_embeddings.weight", "output_layer.weight") and original_vocab:
                t = torch.cat([t, t.new_zeros(cfg.padded_vocab_size - t.shape[0], *t.shape[1:])])
            states[s][key] = t
        if step is None and os.path.exists(os.path.join(d, "step.pt")):
            v = torch.load(os.path.join(d, "step.pt"), map_location="cpu", weights_only=False)
            step = int(v.item() if torch.is_tensor(v) else v)
    if not states["fp32"]:
        raise mlm.MegatronCheckpointError(f"{zero} holds no <param>/fp32.pt of a Megatron-DeepSpeed model")
    if cfg.tie_embeddings:
        for s in _STATES:
            states[s].pop("output_layer.weight", None)
    module = mlm.to_ours(cfg, states["fp32"])
    moments = all(len(states[s]) == len(states["fp32"]) for s in ("exp_avg", "exp_avg_sq"))
    job.parallel.tensor_parallel = tp
    job.parallel.pipeline_parallel = int(getattr(args, "pipeline_model_parallel_size", 1) or 1)
    return job, FullState(
        module=module, exp_avg=mlm.to_ours(cfg, states["exp_avg"]) if moments else None,
        exp_avg_sq=mlm.to_ours(cfg, states["exp_avg_sq"]) if moments else None, step=step,
        client_state={"iteration": int(client.get("iteration", 0)),
                      "consumed_samples": int(getattr(args, "consumed_train_samples", 0) or 0),
                      **({"rng": rng_from_mds(client["rng_state"])} if client.get("rng_state") else {}),
                      "imported_from": f"megatron-deepspeed universal {folder} (TP{tp})"})


# --------------------------------------------------------------------------------------------- RNG
def rng_from_mds(rng_state) -> dict | None:
    """Megatron-DeepSpeed's rng_state (checkpointing.get_rng_state: the same entries as Megatron-LM's) -> our
    `rng`: the python, numpy and torch CPU generators exactly; its cuda_rng_state as our device-0 state."""
    return mls.rng_to_ours(rng_state)


def rng_to_mds(job: JobConfig, state: FullState) -> list:
    """Our rng -> their rng_state for model-parallel rank (0, 0): CPU generators exactly; CUDA and tracker states
    ours when the run had them, else those of a fresh run seeded as theirs (megatron_lm_state.rng_from_ours)."""
    c = state.client_state
    return mls.rng_from_ours(c.get("rng"), c.get("tp_rng"), job.training.seed, 0, 0)


# --------------------------------------------------------------------------------------------- import
def optimizer_shards(names: list[str]) -> list[str]:
    return dsc.zero_optim_files(names)


def to_universal(tag_dir: str, out_dir: str) -> None:
    """DeepSpeed's own ds_to_universal (deepspeed/checkpoint/ds_to_universal.py), in this process, one worker."""
    try:
        dsc.run_ds_to_universal(tag_dir, out_dir)
    except RuntimeError as exc:  # the tool's own failure, in one line with its last output
        raise mlm.MegatronCheckpointError(f"DeepSpeed's ds_to_universal failed on {tag_dir}: {exc}") from None


def _fixed_info(info: dict, names: set[str]) -> dict | None:
    """Megatron-DeepSpeed's UniversalCheckpointInfo names the position table `tied_modules.embed.
    position_embeddings.weight` whenever the model is a GPTModelPipe (gpt_model.py, _get_tp_replicated_param_patterns
    and _get_pp_replicated_param_patterns), but with --untie-embeddings-and-output-weights the embedding is layer 1
    (`1.position_embeddings.weight`); DeepSpeed's tool then stops ("Unused patterns"). Returns the info with the
    pattern naming the real parameter, or None when nothing needs fixing."""
    tied = "tied_modules.embed.position_embeddings.weight"
    if tied in names or "1.position_embeddings.weight" not in names:
        return None
    fixed = {k: ([p if p != tied else "1.position_embeddings.weight" for p in v if p != tied or
                  k != "pipeline_replicated_parameter_patterns"] if isinstance(v, list) else v)
             for k, v in info.items()}
    return fixed if fixed != info else None


def _shadow(tag_dir: str, work: str, client: dict) -> str:
    """`tag_dir` as ds_to_universal (DeepSpeed 0.19.8) reads it: the user's files linked, never changed; the small
    model-states files copied with three changes:
    - original_vocab_size set to the padded size: the tool strips the vocabulary rows past the tokenizer's size,
      which Megatron's logits and softmax still cover (their rows are trained away from being predicted), so
      dropping them changes the next losses; this keeps every row;
    - the universal_checkpoint_info naming the real position table (_fixed_info);
    - the 'module' of a --no-pipeline-parallel save flattened to dotted names: Megatron saves it nested
      ({'language_model': {'embedding': ...}}, state_dict_for_save_checkpoint) and the tool, which copies module
      tensors lacking an optimizer fragment into zero/<name>/fp32.pt, calls .float() on each value."""
    names = {n for shapes in client.get(dsc.PARAM_SHAPES) or [] for n in shapes}
    info = dict(client["universal_checkpoint_info"])
    info = _fixed_info(info, names) or info
    padded = info.get("padded_vocab_size") or getattr(client.get("args"), "padded_vocab_size", None)
    if padded and info.get("original_vocab_size"):
        info["original_vocab_size"] = int(padded)
    shadow = os.path.join(work, "input", os.path.basename(os.path.normpath(tag_dir)))
    os.makedirs(shadow)
    for name in os.listdir(tag_dir):
        src = os.path.join(os.path.abspath(tag_dir), name)
        if dsc.MODEL_STATES_FILE.fullmatch(name):
            sd = torch.load(src, map_location="cpu", weights_only=False)
            sd["universal_checkpoint_info"] = info
            if isinstance(sd.get("module"), dict):
                sd["module"] = {k: v for k, v in mlm._flatten(sd["module"]).items() if torch.is_tensor(v)}
            torch.save(sd, os.path.join(shadow, name))
        else:
            os.symlink(src, os.path.join(shadow, name))
    return shadow


def read_global_step_with_optimizer(tag_dir: str, client: dict, qkv_layout: str = "blocks"
                                    ) -> tuple[JobConfig, FullState]:
    """A Megatron-DeepSpeed global_stepN folder holding ZeRO optimizer shards -> ours with the Adam state: DeepSpeed's
    ds_to_universal makes the universal folder (it needs the model's universal_checkpoint_info), read here."""
    names = os.listdir(tag_dir)
    if not client.get("universal_checkpoint_info"):
        raise mlm.MegatronCheckpointError(
            f"{tag_dir}/{dsc.model_states_file(0)} has no universal_checkpoint_info (Megatron-DeepSpeed writes it "
            f"since its universal-checkpoint support), so DeepSpeed's ds_to_universal cannot merge its optimizer "
            f"shards: pass --no-load-optim to import the weights only")
    shards = optimizer_shards(names)
    bf16 = any(n.startswith("bf16_") for n in shards)
    mp = len(dsc.model_states_files(names))
    dp = int(client.get("dp_world_size") or 1)
    for m in range(mp):
        for r in range(dp):
            if dsc.zero_optim_file(r, m, bf16) not in names:
                raise mlm.MegatronCheckpointError(
                    f"{tag_dir} lacks {dsc.zero_optim_file(r, m, bf16)} (the optimizer shard of DP rank {r}, "
                    f"model-parallel rank {m}): copy the whole global_step folder, or pass --no-load-optim to "
                    f"import the weights only")
    work = tempfile.mkdtemp(prefix="mds_universal_")
    try:
        out = os.path.join(work, os.path.basename(os.path.normpath(tag_dir)) + "_universal")
        to_universal(_shadow(tag_dir, work, client), out)
        job, state = read_megatron_deepspeed_universal(out, client_state(out) or client, qkv_layout)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    state.client_state["imported_from"] = (f"megatron-deepspeed {tag_dir} (TP{job.parallel.tensor_parallel} x "
                                           f"PP{job.parallel.pipeline_parallel}, ZeRO shards via ds_to_universal)")
    return job, state


# --------------------------------------------------------------------------------------------- export
def mds_param_name(key: str, cfg, pipe: bool) -> str:
    """Megatron-DeepSpeed's parameter name (GPTModelPipe's when `pipe`, else GPTModel's) of a canonical
    (Megatron-Core local spec) name; the inverse of canonical_name."""
    from .megatron_deepspeed import _legacy

    if not pipe:
        return _legacy(key)
    L = cfg.num_layers
    if key.startswith("embedding."):
        return ("tied_modules.embed." if cfg.tie_embeddings else "1.") + key[len("embedding."):]
    if key.startswith("decoder.final_layernorm."):
        return f"{2 + L}." + key.rsplit(".", 1)[1]
    if key == "output_layer.weight":
        return f"{3 + L}.lm_head.weight"
    i, rest = _legacy(key)[len("language_model.encoder.layers."):].split(".", 1)
    return f"{int(i) + 2}.{rest}"


def _entry(cfg, key: str, t: torch.Tensor) -> dict:
    """One zero/<param>/<state>.pt as DeepSpeed's universal loader reads it (universal_checkpoint.py
    load_hp_checkpoint_state): the full tensor, the dim its TP slices are cut along, and sub-parameters whose
    pieces each TP rank takes separately."""
    from .megatron_deepspeed import _qkv_to_blocks

    entry = {"cat_dim": 1 if key.endswith((".linear_proj.weight", ".linear_fc2.weight")) else 0}
    if ".self_attention.linear_qkv." in key:  # global [q; k; v]: rank r takes [q_r; k_r; v_r], as it computes
        t = _qkv_to_blocks(cfg, t, 1)
        ng, qpg, d = mlm._groups(cfg)
        if qpg == 1:
            entry[_N_SUB] = 3
        else:
            entry[_SUB_SHAPE] = dsc.universal_subparam_shape(((ng * qpg * d, ng * d, ng * d), *t.shape[1:]))
    elif ".mlp.linear_fc1." in key and cfg.activation == "swiglu":
        entry[_N_SUB] = 2  # [gate; up] over the whole width: rank r takes [gate_r; up_r]
    if key in ("embedding.word_embeddings.weight", "output_layer.weight"):
        entry["vocab_tensor"] = True  # padded rows kept; the loader pads further for a larger padded vocabulary
    entry["param"] = t.float().contiguous()
    return entry


def scheduler_state(job: JobConfig, consumed: int) -> dict:
    """Megatron-DeepSpeed's OptimizerParamScheduler.state_dict for our schedule (steps count samples there).
    Their loader asserts these equal its launch flags unless --override-opt_param-scheduler or
    --use-checkpoint-opt_param-scheduler is given."""
    o, t = job.optim, job.training
    gbs = int(t.global_batch_size or t.micro_batch_size)
    style = {"cosine": "cosine", "linear": "linear", "constant": "constant", "inverse-square-root":
             "inverse-square-root", "wsd": "WSD"}.get(str(o.lr_decay_style).lower(), o.lr_decay_style)
    decay = o.lr_decay_samples or (o.lr_decay_iters or t.train_iters or 0) * gbs
    return {"max_lr": o.lr, "lr_warmup_steps": o.lr_warmup_samples or o.lr_warmup_iters * gbs,
            "lr_warmup_tokens": o.lr_warmup_tokens, "num_steps": consumed,
            "num_tokens": consumed * job.data.seq_length, "lr_decay_style": style, "lr_decay_steps": decay,
            "lr_decay_tokens": o.lr_decay_tokens, "min_lr": o.min_lr, "start_wd": o.weight_decay,
            "end_wd": o.weight_decay, "wd_incr_style": "constant", "wd_incr_steps": (t.train_iters or 0) * gbs}


def write_megatron_deepspeed_universal(job: JobConfig, state: FullState, save_dir: str, pipe: bool, args,
                                       iteration: int, consumed: int) -> str:
    """SAVE/global_step{N}_universal (+ SAVE/latest_universal): our weights, Adam moments and step under
    Megatron-DeepSpeed's names, for their --universal-checkpoint at any TP x PP x DP."""
    import deepspeed

    cfg = job.model
    out = os.path.join(save_dir, f"global_step{iteration}_universal")
    if os.path.exists(out):
        raise mlm.MegatronCheckpointError(f"{out} exists: choose a new --save directory")
    staged = out + ".staging"
    zero = os.path.join(staged, "zero")
    full = {s: mlm.from_ours(cfg, sd) for s, sd in (("fp32", state.module), ("exp_avg", state.exp_avg),
                                                     ("exp_avg_sq", state.exp_avg_sq))}
    for key in full["fp32"]:
        if key == "output_layer.weight" and cfg.tie_embeddings:
            continue
        d = os.path.join(zero, mds_param_name(key, cfg, pipe))
        os.makedirs(d)
        for s, tensors in full.items():
            torch.save(_entry(cfg, key, tensors[key]), os.path.join(d, f"{s}.pt"))
        torch.save(torch.tensor(float(state.step or 0)), os.path.join(d, "step.pt"))
    o = job.optim
    group = {"lr_mult": 1.0, "lr": o.lr, "betas": (o.adam_beta1, o.adam_beta2), "eps": o.adam_eps}
    torch.save({"param_groups": [{"name": "wd_no_scale_lr", "wd_mult": 1.0, "weight_decay": o.weight_decay, **group},
                                 {"name": "no_wd_no_scale_lr", "wd_mult": 0.0, "weight_decay": 0.0, **group}],
                "ds_version": deepspeed.__version__, "clip_grad": o.clip_grad},
               os.path.join(zero, "optimizer_state.pt"))
    info = {"universal_checkpoint_version": dsc.universal_checkpoint_version(), "original_vocab_size": cfg.vocab_size,
            "padded_vocab_size": cfg.padded_vocab_size,
            _SWIGLU_INFO: [("" if pipe else "language_model.encoder.layers.") + rf"\d+.mlp.dense_h_to_4h.{p}"
                           for p in ("weight", "bias") if p == "weight" or cfg.bias]
            if cfg.activation == "swiglu" else []}
    client = {"module": None, "args": args, "checkpoint_version": 3.0, "iteration": iteration,
              "tokens": consumed * job.data.seq_length, "universal_checkpoint_info": info,
              "lr_scheduler": scheduler_state(job, consumed), "global_steps": iteration, "global_samples": consumed,
              "skipped_steps": 0, "dp_world_size": 1, "mp_world_size": 1, "ds_version": deepspeed.__version__}
    client["rng_state"] = rng_to_mds(job, state)
    torch.save(client, os.path.join(staged, dsc.model_states_file(0)))
    os.replace(staged, out)
    with open(os.path.join(save_dir, "latest_universal"), "w") as f:
        f.write(os.path.basename(out))
    return out
