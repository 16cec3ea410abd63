"""Checkpoints across layouts: read a checkpoint of any TP x DP x ZeRO layout into full single-device tensors
(weights AND Adam state), write them as a layout-free "full" checkpoint, and put a full state into a live DeepSpeed
engine of any ZeRO stage / DP size / TP size, or a pipeline stage of any
TP x PP x DP layout (ZeRO-0 or ZeRO-1). `tools/reshard_checkpoint.py` and `training.checkpoint` use it.

Source files (DeepSpeed 0.19.8 on-disk layout, read directly, no process group; `tp` = the `mp_rank_XX` index,
`dp` = the `zero_pp_rank_N` index):

- ZeRO 0: `mp_rank_{tp:02d}_model_states.pt` holds 'module' (this TP rank's tensors) and 'optimizer', the torch
  AdamW state_dict whose state is keyed by position in the optimizer's parameter order (`opt_order` below).
- ZeRO 1/2: 'module' as above (every DP rank holds full weights); `zero_pp_rank_{dp}_mp_rank_{tp:02d}_optim_states.pt`
  holds per param group g a flat fp32 partition ('single_partition_of_fp32_groups'[g]) and the Adam state of the
  same shape ('base_optimizer_state'['state'][g]). Concatenated over dp ranks they form the group's flat buffer in
  which the parameters named by the model file's 'param_shapes'[g] lie back to back (each followed by its
  'param_alignment_paddings' entry; the tail is padding).
- ZeRO 3: `zero_pp_rank_{dp}_mp_rank_{tp:02d}_model_states.pt` ('param_shapes') and optim files with
  'fp32_flat_groups' and 'optimizer_state_dict'. Every parameter is split on its own into ceil(numel / DP) pieces,
  rank r holding piece r (the last padded); a rank's flat buffer is its pieces back to back in 'param_shapes'
  order, over all groups.

TP shards are merged with `tensor_parallel.partition_spec` (which dim each parameter is split along). Pipeline
checkpoints: weights from DeepSpeed's per-layer files; Adam state from ZeRO-1 shards of every stage (`_read_pipeline`),
from each stage's torch AdamW state at ZeRO-0 (positions named by the stage boundaries the checkpoint's layout
records, 'pipeline_parts'), or, for bf16 at ZeRO-0, from DeepSpeed's BF16_Optimizer files
(`bf16_zero_pp_rank_{dp}_mp_rank_XX_optim_states.pt`, located by their 'param_slice_mappings').

The full format (`full_state.pt` in a checkpoint tag directory): {"format", "module": {name: fp32},
"exp_avg"/"exp_avg_sq": {name: fp32} or None, "step", "client_state" (iteration, consumed samples, RNG, ...),
"engine": DeepSpeed counters}. It is loaded with mmap, so each rank pages in only the slices it keeps.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from ..config.base import ConfigError
from . import deepspeed_compat as dsc
from ..utils import atomic
from ..utils.checksums import file_records

FULL_FILE = "full_state.pt"
FULL_FORMAT = "megatron_code.full/1"
ADAM_KEYS = ("exp_avg", "exp_avg_sq")


class ReshardError(ConfigError):
    """A checkpoint cannot be read or converted as asked (missing shards, unsupported layout)."""


@dataclass
class FullState:
    """Single-device view of a training state. `exp_avg`/`exp_avg_sq` are None when the optimizer was not saved."""

    module: dict[str, torch.Tensor]
    exp_avg: Optional[dict[str, torch.Tensor]] = None
    exp_avg_sq: Optional[dict[str, torch.Tensor]] = None
    step: Optional[int] = None
    client_state: dict[str, Any] = field(default_factory=dict)
    engine: dict[str, Any] = field(default_factory=dict)  # DeepSpeed's global_steps / global_samples / skipped


# ----------------------------------------------------------------------------- reading one TP rank
def _load(path: str) -> dict:
    if not os.path.exists(path):
        raise ReshardError(f"{path} is missing: the checkpoint is incomplete for the layout its config.yaml records")
    return torch.load(path, map_location="cpu", weights_only=False, mmap=True)


def _count(d: str, kind: str) -> int:
    """DP ranks that wrote ZeRO files of `kind` ("optim", "model", "bf16_optim") in checkpoint directory `d`."""
    return dsc.count_zero_ranks(os.listdir(d), kind)


def _names_shapes(model_states: dict) -> list[list[tuple[str, torch.Size]]]:
    return [list(g.items()) for g in model_states[dsc.PARAM_SHAPES]]


def _read_zero0(d: str, tp_rank: int, opt_order: Optional[list[str]]):
    sd = _load(os.path.join(d, dsc.model_states_file(tp_rank)))
    module = dict(sd[dsc.MODULE])
    opt = sd.get(dsc.OPTIMIZER)
    if not opt or not opt.get("state") or opt_order is None:
        return sd, module, None, None
    indices = [i for g in opt["param_groups"] for i in g["params"]]
    if len(indices) != len(opt_order):
        raise ReshardError(f"{d}: the saved optimizer has {len(indices)} parameters but the model {len(opt_order)}")
    moments = {k: {} for k in ADAM_KEYS}
    step = None
    for pos, name in zip(indices, opt_order):
        st = opt["state"][pos]
        for k in ADAM_KEYS:
            moments[k][name] = st[k]
        step = int(st["step"])
    return sd, module, moments, step


def _split_flat(flat: torch.Tensor, names_shapes, paddings=None) -> dict[str, torch.Tensor]:
    out, offset = {}, 0
    for i, (name, shape) in enumerate(names_shapes):
        n = math.prod(shape)
        out[name] = flat[offset:offset + n].view(shape).clone()
        offset += n + (paddings[i] if paddings else 0)
    if offset > flat.numel():
        raise ReshardError(f"flat ZeRO buffer has {flat.numel()} elements but the parameters need {offset}")
    return out


def _read_zero12(d: str, tp_rank: int, dp: int):
    sd = _load(os.path.join(d, dsc.model_states_file(tp_rank)))
    groups = _names_shapes(sd)
    shards = [_load(os.path.join(d, dsc.zero_optim_file(r, tp_rank)))[dsc.OPTIMIZER_STATE_DICT]
              for r in range(dp)]
    module, moments, step = {}, {k: {} for k in ADAM_KEYS}, None
    pads = shards[0].get(dsc.PARAM_ALIGNMENT_PADDINGS)
    for g, names_shapes in enumerate(groups):
        p = pads[g] if pads else None
        flat = torch.cat([s[dsc.SINGLE_PARTITION_OF_FP32_GROUPS][g] for s in shards])
        module.update(_split_flat(flat, names_shapes, p))
        for k in ADAM_KEYS:
            flat = torch.cat([s[dsc.BASE_OPTIMIZER_STATE]["state"][g][k] for s in shards])
            moments[k].update(_split_flat(flat, names_shapes, p))
        step = int(shards[0][dsc.BASE_OPTIMIZER_STATE]["state"][g]["step"])
    # Buffers and anything not in the optimizer come from the module copy (pipeline checkpoints have none here).
    for k, v in (sd.get(dsc.MODULE) or {}).items():
        module.setdefault(k, v)
    return sd, module, moments, step


def _merge_zero3(flats: list[torch.Tensor], names_shapes) -> dict[str, torch.Tensor]:
    """flats[r] = rank r's flat buffer (all groups) -> {name: full tensor}."""
    dp, out, offset = len(flats), {}, 0
    for name, shape in names_shapes:
        n = math.prod(shape)
        part = math.ceil(n / dp)  # every rank holds `part` elements of each parameter, the last one padded
        out[name] = torch.cat([f[offset:offset + part] for f in flats])[:n].view(shape).clone()
        offset += part
    return out


def _read_zero3(d: str, tp_rank: int, dp: int):
    sd = _load(os.path.join(d, dsc.zero3_model_states_file(0, tp_rank)))
    names_shapes = [ns for g in _names_shapes(sd) for ns in g]
    shards = [_load(os.path.join(d, dsc.zero_optim_file(r, tp_rank)))[dsc.OPTIMIZER_STATE_DICT]
              for r in range(dp)]
    module = _merge_zero3([torch.cat(list(s[dsc.FP32_FLAT_GROUPS])) for s in shards], names_shapes)
    moments = {}
    for k in ADAM_KEYS:
        flats = [torch.cat([s[dsc.OPTIMIZER_STATE_DICT]["state"][i][k]
                            for i in sorted(s[dsc.OPTIMIZER_STATE_DICT]["state"])]) for s in shards]
        moments[k] = _merge_zero3(flats, names_shapes)
    states = shards[0][dsc.OPTIMIZER_STATE_DICT]["state"]
    step = int(states[min(states)]["step"])
    return sd, module, moments, step


def _layout(job) -> tuple[int, int, int, int]:
    p = job.parallel
    return p.tensor_parallel, p.pipeline_parallel, p.zero_stage, p.cpu_offload


def read_full_state(tag_dir: str, job, opt_order: Optional[list[str]] = None,
                    weights_only: bool = False) -> FullState:
    """Everything in a checkpoint tag directory as single-device tensors. `job` is the config saved with it;
    `opt_order` = parameter names in the optimizer's order (needed for ZeRO-0 Adam state only)."""
    full = os.path.join(tag_dir, FULL_FILE)
    if os.path.exists(full):
        return load_full_file(full)
    tp, pp, zero, _ = _layout(job)
    if pp > 1:
        return _read_pipeline(tag_dir, job, weights_only)
    if zero == 3:
        dp = _count(tag_dir, "model")
    else:
        dp = _count(tag_dir, "optim") or 1
    # DeepSpeed's BF16_Optimizer (bf16 at ZeRO-1, e.g. with tensor parallelism) writes no zero_pp_rank files: its
    # model-states files hold the (bf16) weights, read like ZeRO-0's; its fp32 state is in bf16_zero_pp_rank files.
    bf16_optimizer = zero in (1, 2) and not _count(tag_dir, "optim") and _count(tag_dir, "bf16_optim")
    if bf16_optimizer and not weights_only:
        raise ReshardError(f"{tag_dir}: resharding the optimizer state of DeepSpeed's BF16_Optimizer at pipeline "
                           f"size 1 is not supported; resume it at its own layout")
    per_tp = []
    for r in range(tp):
        if zero == 0 or bf16_optimizer:
            per_tp.append(_read_zero0(tag_dir, r, opt_order))
        elif zero in (1, 2):
            per_tp.append(_read_zero12(tag_dir, r, dp))
        else:
            per_tp.append(_read_zero3(tag_dir, r, dp))
    sd0, _, moments0, step = per_tp[0]
    merge = _tp_merger(job.model, tp)
    module = merge([m for _, m, _, _ in per_tp])
    moments = {k: merge([mo[k] for _, _, mo, _ in per_tp]) for k in ADAM_KEYS} if moments0 else None
    client = {k: v for k, v in sd0.items() if k in ("iteration", "consumed_samples", "rng",
                                                      "tokenizer_fingerprint", "layout")}
    engine = {k: sd0.get(k) for k in dsc.ENGINE_COUNTERS}
    module = {k.removeprefix("module."): v for k, v in module.items()}
    return FullState(module=module, exp_avg=moments and moments["exp_avg"],
                     exp_avg_sq=moments and moments["exp_avg_sq"], step=step, client_state=client, engine=engine)


def _gpt_name(pipe_name: str) -> str:
    """PipelineModule parameter name -> GPT name: '3.layers.2.attn.q_proj.weight' -> 'layers.2.attn.q_proj.weight',
    'tied_modules.embed.embed.word.weight' -> 'embed.word.weight' (pipeline.py keeps GPT paths under the layer)."""
    head, _, rest = pipe_name.partition(".")
    if head.isdigit():
        return rest
    if head == "tied_modules":
        return rest.partition(".")[2]
    return pipe_name


def _assemble(per_tp: list, merge, sd0: dict, step) -> "FullState":
    """FullState from per-TP-rank (module, moments) pairs: merge the TP shards, keep our client state and
    DeepSpeed's step counters from the first model-states file."""
    moments = {k: merge([mo[k] for _, mo in per_tp]) for k in ADAM_KEYS}
    client = {k: v for k, v in sd0.items() if k in ("iteration", "consumed_samples", "rng", "tokenizer_fingerprint",
                                                      "layout")}
    engine = {k: sd0.get(k) for k in dsc.ENGINE_COUNTERS}
    return FullState(module=merge([m for m, _ in per_tp]), exp_avg=moments["exp_avg"],
                     exp_avg_sq=moments["exp_avg_sq"], step=step, client_state=client, engine=engine)


def _read_pipeline(tag_dir: str, job, weights_only: bool) -> FullState:
    """PP > 1: weights from the per-layer files (pipeline.pipeline_model_states); with ZeRO-1, fp32 weights and Adam
    state from each stage's shards, `mp_rank_XX` = pp_rank x TP + tp_rank (DeepSpeed's model-parallel rank). The
    tied embedding lives on the first and last stage with identical values and state: the first stage's is kept."""
    tp, pp, zero, _ = _layout(job)
    merge = _tp_merger(job.model, tp)
    if weights_only:
        from .pipeline import pipeline_model_states
        weights = merge(pipeline_model_states(tag_dir))
        return FullState(module={k.removeprefix("module."): v for k, v in weights.items()})
    if zero == 0 and _count(tag_dir, "bf16_optim"):
        return _read_pipeline_bf16(tag_dir, job, merge)
    if zero == 0:
        return _read_pipeline_zero0(tag_dir, job, merge)
    if zero != 1:
        raise ReshardError(f"{tag_dir} is a pipeline checkpoint with ZeRO-{zero}; its optimizer state is read for "
                           f"ZeRO-0 and ZeRO-1 only")
    dp = _count(tag_dir, "optim")
    per_tp = []
    sd0 = step = None
    for t in range(tp):
        module, moments = {}, {k: {} for k in ADAM_KEYS}
        for stage in range(pp):
            sd, mod, mom, step = _read_zero12(tag_dir, stage * tp + t, dp)
            sd0 = sd0 or sd
            for name, v in mod.items():
                module.setdefault(_gpt_name(name), v)
            for k in ADAM_KEYS:
                for name, v in mom[k].items():
                    moments[k].setdefault(_gpt_name(name), v)
        per_tp.append((module, moments))
    return _assemble(per_tp, merge, sd0, step)


def _layer_files(tag_dir: str, tp_rank: int) -> dict[int, dict[str, torch.Tensor]]:
    """{pipeline layer index: its GPT-named tensors} of one TP rank (DeepSpeed's `layer_XX-model_YY` files)."""
    out = {}
    for f in os.listdir(tag_dir):
        m = dsc.LAYER_FILE.fullmatch(f)
        if m and int(m.group(2) or 0) == tp_rank:
            out[int(m.group(1))] = torch.load(os.path.join(tag_dir, f), map_location="cpu", weights_only=True)
    return out


def _stage_opt_order(layers: dict[int, list[str]], shapes: dict[str, torch.Size], first: int, stop: int,
                     tied: bool, last: bool) -> list[str]:
    """GPT names of a stage holding pipeline layers [first, stop) in its torch optimizer's order: DeepSpeed's
    PipelineModule registers the tied modules (the embedding, on the first and last stage) before its numbered
    layers, and training.optimizer.param_groups puts matrices (decay) before vectors and biases (no decay)."""
    names = []
    if tied and (first == 0 or last):
        names += list(layers[0])
    names += [n for i in range(first, stop) if not (tied and i == 0) for n in layers.get(i, [])]
    no_decay = {n for n in names if len(shapes[n]) < 2 or n.endswith(".bias")}
    return [n for n in names if n not in no_decay] + [n for n in names if n in no_decay]


def _read_pipeline_bf16(tag_dir: str, job, merge) -> FullState:
    """PP > 1, bf16 at ZeRO-0: DeepSpeed's BF16_Optimizer keeps each stage's fp32 weights and Adam state in
    `bf16_zero_pp_rank_{dp}_mp_rank_XX_optim_states.pt`: per param group one flat partition per DP rank, and
    'param_slice_mappings' saying where each parameter's piece lies in it (a parameter split between DP ranks is
    its pieces in rank order). The tied embedding (first and last stage, identical) is taken from the first."""
    tp, pp, _, _ = _layout(job)
    dp = _count(tag_dir, "bf16_optim")
    per_tp, sd0, step = [], None, None
    for t in range(tp):
        shapes = {n: v.shape for layer in _layer_files(tag_dir, t).values() for n, v in layer.items()}
        module, moments = {}, {k: {} for k in ADAM_KEYS}
        for stage in range(pp):
            mp = stage * tp + t
            sd0 = sd0 or _load(os.path.join(tag_dir, dsc.model_states_file(mp)))
            pieces: dict[str, dict[str, list]] = {}  # GPT name -> {"fp32" | Adam key: [pieces in rank order]}
            for r in range(dp):
                o = _load(os.path.join(tag_dir, dsc.zero_optim_file(r, mp, bf16=True)))[dsc.OPTIMIZER_STATE_DICT]
                for g, mapping in enumerate(o[dsc.PARAM_SLICE_MAPPINGS]):
                    state = o[dsc.BASE_OPTIMIZER_STATE]["state"][g]
                    flats = {"fp32": o[dsc.SINGLE_PARTITION_OF_FP32_GROUPS][g], **{k: state[k] for k in ADAM_KEYS}}
                    step = int(state["step"])
                    for name, frag in mapping.items():
                        for key, flat in flats.items():
                            pieces.setdefault(_gpt_name(name), {}).setdefault(key, []).append(
                                flat.narrow(0, frag.start, frag.numel))
            for name, parts in pieces.items():
                if name in module:
                    continue
                module[name] = torch.cat(parts["fp32"]).view(shapes[name])
                for k in ADAM_KEYS:
                    moments[k][name] = torch.cat(parts[k]).view(shapes[name])
        per_tp.append((module, moments))
    return _assemble(per_tp, merge, sd0, step)


def _read_pipeline_zero0(tag_dir: str, job, merge) -> FullState:
    """PP > 1, ZeRO-0: each stage's `mp_rank_XX` file holds its torch AdamW state keyed by position; the stage
    boundaries (which pipeline layers each stage held) say which parameter each position is."""
    tp, pp, _, _ = _layout(job)
    tied = job.model.tie_embeddings
    n_layers = job.model.num_layers + 3
    per_tp, sd0, step = [], None, None
    for t in range(tp):
        layers = _layer_files(tag_dir, t)
        opts = []
        for stage in range(pp):
            sd = _load(os.path.join(tag_dir, dsc.model_states_file(stage * tp + t)))
            sd0 = sd0 or sd
            opt = sd.get(dsc.OPTIMIZER) or {}
            if not opt.get("state"):
                raise ReshardError(f"{tag_dir}: stage {stage} holds no optimizer state (saved with --no-save-optim?)")
            idx = [i for g in opt["param_groups"] for i in g["params"]]
            opts.append([opt["state"][i] for i in idx])
        shapes = {n: v.shape for layer in layers.values() for n, v in layer.items()}
        bounds = (sd0.get("layout") or {}).get("pipeline_parts")
        if bounds is None:
            bounds = stage_bounds_from_counts({i: len(v) for i, v in layers.items()}, [len(o) for o in opts],
                                              n_layers, tag_dir)
        orders = zero0_stage_orders(shapes, {i: list(v) for i, v in layers.items()}, opts, bounds, tied, tag_dir)
        module, moments = {}, {k: {} for k in ADAM_KEYS}
        for layer in layers.values():
            module.update(layer)
        for order, st in zip(orders, opts):
            for name, x in zip(order, st):
                for k in ADAM_KEYS:
                    moments[k].setdefault(name, x[k])
                step = int(x["step"])
        per_tp.append((module, moments))
    return _assemble(per_tp, merge, sd0, step)


def stage_bounds_from_counts(counts: dict[int, int], stage_sizes: list[int], n_layers: int,
                             where: str) -> list[int]:
    """Stage boundaries of a ZeRO-0 pipeline checkpoint saved before they were recorded in its layout
    ('pipeline_parts'): derived in one pass from how many parameters each stage's optimizer holds. Every pipeline
    layer but the tied head (the last, whose weight is the embedding's) holds parameters, so the running sum meets
    each stage's size at exactly one layer. `counts` {pipeline layer: number of tensors}; the shapes are checked
    afterwards (`zero0_stage_orders`)."""
    bounds, i = [0], 0
    for s, size in enumerate(stage_sizes[:-1]):  # the last stage takes the rest (and, tied, the embedding again)
        total = 0
        while i < n_layers and total < size:
            total += counts.get(i, 0)
            i += 1
        if total != size:
            raise ReshardError(f"{where}: stage {s}'s saved optimizer state ({size} tensors) matches no run of "
                               f"pipeline layers: the checkpoint does not come from this model config")
        bounds.append(i)
    bounds.append(n_layers)
    return bounds


def zero0_stage_orders(shapes: dict[str, torch.Size], layers: dict[int, list[str]], opts: list[list[dict]],
                       bounds: list[int], tied: bool, where: str) -> list[list[str]]:
    """The GPT names of each stage's optimizer positions, for stages holding pipeline layers [bounds[s],
    bounds[s+1]); raises unless every position's saved Adam state has its parameter's shape."""
    pp = len(opts)
    if len(bounds) != pp + 1:
        raise ReshardError(f"{where}: the recorded pipeline boundaries {list(bounds)} are not for {pp} stages")
    orders = [_stage_opt_order(layers, shapes, bounds[s], bounds[s + 1], tied, s == pp - 1) for s in range(pp)]
    for s, (order, st) in enumerate(zip(orders, opts)):
        if len(order) != len(st) or any(shapes[n] != x["exp_avg"].shape for n, x in zip(order, st)):
            raise ReshardError(f"{where}: stage {s}'s saved optimizer state does not match pipeline layers "
                               f"[{bounds[s]}, {bounds[s + 1]}) of this model config: the checkpoint does not "
                               f"come from it")
    return orders


def _tp_merger(model_cfg, tp: int):
    if tp == 1:
        return lambda shards: dict(shards[0])
    from .tensor_parallel import merge_tp_shards, partition_spec
    spec = partition_spec(model_cfg, tp)
    return lambda shards: merge_tp_shards(shards, spec)


def consolidate_layout(ckpt_tag_dir: str, job) -> dict[str, torch.Tensor]:
    """Full single-device GPT state dict (fp32 for fp32 runs) from a checkpoint of any supported layout."""
    return read_full_state(ckpt_tag_dir, job, weights_only=True).module


# ----------------------------------------------------------------------------- the full (layout-free) file
def save_full_file(path: str, state: FullState) -> None:
    tmp = atomic.tmp_path(path)
    torch.save({"format": FULL_FORMAT, "module": state.module, "exp_avg": state.exp_avg,
                "exp_avg_sq": state.exp_avg_sq, "step": state.step, "client_state": state.client_state,
                "engine": state.engine}, tmp)
    atomic.replace(tmp, path)


def load_full_file(path: str) -> FullState:
    sd = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    if sd.get("format") != FULL_FORMAT:
        raise ReshardError(f"{path}: unknown full-checkpoint format {sd.get('format')!r} (expected {FULL_FORMAT})")
    return FullState(module=sd["module"], exp_avg=sd["exp_avg"], exp_avg_sq=sd["exp_avg_sq"], step=sd["step"],
                     client_state=sd["client_state"], engine=sd["engine"])


# ----------------------------------------------------------------------------- into a live engine
def _shard_fn(model_cfg, tp: int, tp_rank: int):
    if tp == 1:
        return lambda name, t: t
    from .tensor_parallel import partition_spec
    spec = partition_spec(model_cfg, tp)

    def shard(name: str, t: torch.Tensor) -> torch.Tensor:
        dim = spec.get(name)
        return t if dim is None else t.chunk(tp, dim=dim)[tp_rank]
    return shard


@torch.no_grad()
def load_full_into_engine(engine, state: FullState, model_cfg, tp: int = 1, tp_rank: int = 0,
                          load_optimizer: bool = True) -> None:
    """Collective over the engine's ranks. Copy a full state into `engine` (any ZeRO stage, DP size, offload, or a
    pipeline stage), taking this TP rank's slice of split parameters. Every parameter of the engine must be in the
    state. A pipeline stage's parameters ('3.layers.2.attn.q_proj.weight', 'tied_modules.embed.embed.word.weight')
    are looked up under their GPT names; the tied embedding's copies on the first and last stage both get the
    checkpoint's weight and Adam state (their gradients are all-reduced, so they stay identical)."""
    shard = _shard_fn(model_cfg, tp, tp_rank)
    named = list(engine.module.named_parameters())
    if type(engine).__name__ == "PipelineEngine":
        named = [(_gpt_name(n), p) for n, p in named]
    missing = [n for n, _ in named if n not in state.module]
    if missing:
        raise ReshardError(f"the full checkpoint lacks parameters {missing[:5]}: it was saved from another model")
    with_opt = load_optimizer and state.exp_avg is not None
    base = getattr(engine.optimizer, "optimizer", engine.optimizer)
    if with_opt:
        _ensure_adam_state(engine.optimizer, base, state.step or 0)
    masters = {id(lp): (key, view) for lp, key, view in dsc.zero0_masters(engine.optimizer)}
    for name, p in named:
        value = shard(name, state.module[name]).to(torch.float32)
        _set_param(p, value)
        if id(p) in masters:  # fp16/bf16 at ZeRO-0: the inner optimizer steps an fp32 master copy of p
            masters[id(p)][1].copy_(value.view_as(p))
        if not with_opt:
            continue
        moments = {k: shard(name, getattr(state, k)[name]).to(torch.float32) for k in ADAM_KEYS}
        if id(p) in masters:
            key, view = masters[id(p)]
            offset = view.storage_offset() - key.storage_offset()
            for k, v in moments.items():
                base.state[key][k].view(-1).narrow(0, offset, view.numel()).copy_(v.reshape(-1))
        elif dsc.has_fp32_mapping(p):
            from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state
            safe_set_full_fp32_param(p, value)
            for k, v in moments.items():
                safe_set_full_optimizer_state(p, v, k)
        else:  # plain torch optimizer (ZeRO-0, fp32): the state is keyed by the model parameter itself
            for k, v in moments.items():
                base.state[p][k].copy_(v.view_as(p))
    for k, v in state.engine.items():
        if v is not None and hasattr(engine, k):
            setattr(engine, k, v)


def _ensure_adam_state(wrapper, base, step: int) -> None:
    """torch Adam(W) builds its state lazily at the first step, and DeepSpeed links its per-parameter views of it
    only then: create the state in torch's own format (zeroed, with the checkpoint's step count) and link it, so
    the full values can be written into it before any step."""
    keys = dsc.fp32_state_keys(wrapper)
    if keys is None:
        keys = [p for group in base.param_groups for p in group["params"]]
    for p in keys:
        st = base.state[p]
        for k in ADAM_KEYS:
            if k not in st:
                st[k] = torch.zeros_like(p, memory_format=torch.preserve_format)
        old = st.get("step")
        if torch.is_tensor(old):
            st["step"] = torch.full_like(old, float(step))
        else:  # torch keeps the step on the parameter's device for fused/capturable Adam, on the CPU otherwise
            on_device = base.defaults.get("fused") or base.defaults.get("capturable")
            st["step"] = torch.tensor(float(step), device=p.device if on_device else "cpu")
    dsc.link_optimizer_state(wrapper)


def _set_param(p: torch.nn.Parameter, value: torch.Tensor) -> None:
    if dsc.is_zero3_param(p):  # ZeRO-3: gather, let rank 0 write, re-partition (one parameter in memory at a time)
        import deepspeed
        with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
            p.data.copy_(value.view(p.shape).to(p.dtype))
        return
    if tuple(p.shape) != tuple(value.shape):
        raise ReshardError(f"shape mismatch loading a full checkpoint: engine {tuple(p.shape)} vs {tuple(value.shape)}")
    p.data.copy_(value.to(p.dtype))


# ----------------------------------------------------------------------------- the conversion
def reshard_to_full(tag_dir: str, job, save_dir: str, tp: int, pp: int, zero: Optional[int] = None,
                    opt_order: Optional[list[str]] = None, progress=None) -> str:
    """Write SAVE/<same tag>/ holding the full state of `tag_dir` and a config.yaml with the target layout
    (TP `tp`, PP `pp`, ZeRO `zero` or unchanged), then point SAVE/latest at it. Returns the new tag directory.
    `job` is the source checkpoint's config (it is modified). Atomic: staged in SAVE/.staging, then renamed."""
    import json
    import shutil
    import time

    src_layout = dict(tp=job.parallel.tensor_parallel, pp=job.parallel.pipeline_parallel, zero=job.parallel.zero_stage)
    state = read_full_state(tag_dir, job, opt_order)
    if progress:
        progress("read")
    job.parallel.tensor_parallel, job.parallel.pipeline_parallel = tp, pp
    if zero is not None:
        job.parallel.zero_stage = zero
    job.validate()
    if tp > 1:
        from .plans import plan_for
        plan_for(job.model, tp)  # raises a clear PlanError when the model does not shard at this size
    if state.exp_avg is None:
        raise ReshardError(f"{tag_dir} holds no optimizer state we can read (saved with --no-save-optim, or a "
                           f"ZeRO-0 bf16/fp16 checkpoint, whose optimizer format is not read yet: save with "
                           f"--zero-stage 1 or higher): a resharded run could not continue exactly")
    tag = os.path.basename(os.path.normpath(tag_dir))
    final = os.path.join(save_dir, tag)
    if os.path.exists(final):
        raise ReshardError(f"{final} already exists: choose an empty --save directory")
    staged = os.path.join(save_dir, ".staging", tag)
    shutil.rmtree(staged, ignore_errors=True)
    os.makedirs(staged)
    state.client_state["layout"] = {"tp": tp, "pp": pp, "zero": job.parallel.zero_stage, "format": "full",
                                    "resharded_from": src_layout}
    save_full_file(os.path.join(staged, FULL_FILE), state)
    if progress:
        progress("written")
    job.parallel.deepspeed_config = None  # the source run's JSON may pin the old ZeRO stage
    job.save(os.path.join(staged, "config.yaml"))
    meta = {"iteration": state.client_state.get("iteration"),
            "consumed_samples": state.client_state.get("consumed_samples"),
            "tokenizer_fingerprint": state.client_state.get("tokenizer_fingerprint"),
            "layout": state.client_state["layout"], "time": time.time()}
    tok = os.path.join(tag_dir, "tokenizer")
    if os.path.isdir(tok):
        shutil.copytree(tok, os.path.join(staged, "tokenizer"))
    meta["files"] = file_records(staged)  # checked on load (training/ckpt_store.py)
    atomic.write_text(os.path.join(staged, "meta.json"), json.dumps(meta, indent=2))
    atomic.publish_tag(save_dir, staged, tag)
    shutil.rmtree(os.path.join(save_dir, ".staging"), ignore_errors=True)
    return final


# ----------------------------------------------------------------------------- load-side helpers (training.checkpoint)
def load_full_checkpoint(engine, path: str, model_cfg, tp: int, load_optimizer: bool) -> dict[str, Any]:
    """Collective. Load a `full_state.pt` into the engine at whatever layout it runs; returns the client state."""
    state = load_full_file(path)
    mpu = getattr(engine, "mpu", None)
    tp_rank = mpu.get_tensor_model_parallel_rank() if (mpu is not None and tp > 1) else 0
    load_full_into_engine(engine, state, model_cfg, tp=tp, tp_rank=tp_rank, load_optimizer=load_optimizer)
    return dict(state.client_state)


def check_same_layout(saved: Optional[dict], now: dict, where: str, module_only: bool = False) -> None:
    """A native DeepSpeed checkpoint loads only at the TP/PP/ZeRO layout it was saved at (and, with ZeRO >= 1, the
    same DP size, which fixes the optimizer partitions). Raise naming the converter otherwise. `module_only`
    (fine-tuning from the weights): only TP/PP matter, unless the weights themselves are ZeRO-3 partitions."""
    if not saved:
        return
    if module_only and saved.get("zero", 0) != 3 and now.get("zero", 0) != 3:
        keys: tuple[str, ...] = ("tp", "pp")
    else:
        keys = ("tp", "pp", "zero") + (("dp",) if saved.get("zero", 0) >= 1 or now.get("zero", 0) >= 1 else ())
    diffs = [f"{k} {saved.get(k)} -> {now.get(k)}" for k in keys if saved.get(k) is not None and saved.get(k) != now[k]]
    if diffs:
        raise ReshardError(f"{where} was saved at another parallel layout ({', '.join(diffs)}): resume at the saved "
                           f"layout, or convert it first with `python tools/reshard_checkpoint.py --load {where} "
                           f"--save NEW_DIR --tensor-model-parallel-size N --pipeline-model-parallel-size M "
                           f"[--zero-stage Z]` and --load NEW_DIR")
