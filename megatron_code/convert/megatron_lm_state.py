"""Adam and RNG state of Megatron-LM's legacy ``--ckpt-format torch`` checkpoints <-> ours.

The layouts below are read from Megatron-LM core_v0.16.1 (megatron/core/optimizer/__init__.py, optimizer.py,
distrib_optimizer.py, megatron/core/distributed/param_and_grad_buffer.py, megatron/training/checkpointing.py); the
rules that order parameters are that version's and are checked against what each file records.

**Parameter groups** (``_get_param_groups``): every trainable parameter, in the model's ``named_parameters()``
order (the order of the keys of the rank's ``model`` dict, ``_extra_state`` left out), gets an override: weight
decay multiplier 0 when it is 1-D or its name ends in ``.bias``; with ``--decoupled-lr`` the word embeddings and the
output layer get ``max_lr``/``min_lr``. Parameters with equal overrides form one group, the groups sorted with the
no-override group first, then by the sorted override items; the group keys of all ranks are united (a rank may hold
an empty group). Default runs: group 0 = decayed weights, group 1 = norms and biases.

**Non-distributed optimizer** (``model_optim_rng.pt['optimizer']``):
- fp32 runs (``FP32Optimizer.state_dict``): torch's Adam/AdamW ``state_dict``: ``state`` keyed by the parameter's
  position over the groups (``param_groups[g]['params']`` lists them), each ``{'step', 'exp_avg', 'exp_avg_sq'}``.
- bf16/fp16 runs (``Float16OptimizerWithFloat16Params.state_dict``): ``{'optimizer': that torch state dict,
  'grad_scaler': DynamicGradScaler's {'scale', 'growth_tracker', 'hysteresis_tracker'} (fp16 only),
  'fp32_from_fp16_params': per group the fp32 master of each parameter}``.

**Distributed optimizer** (``--use-distributed-optimizer``): ``model_optim_rng.pt['optimizer']`` holds only the
hyperparameters (``{'optimizer': {'param_groups': [... 'step' ...]}, 'grad_scaler'?}``); the tensors are in
``distrib_optim.pt`` beside it (``get_parameter_state_dp_zero``): ``{'buckets_coalesced': True, buffer index:
{(param dtype, grad dtype): {'param', 'exp_avg', 'exp_avg_sq': flat fp32, 'numel_unpadded'}}}``. A buffer holds the
rank's parameters in *reverse* ``named_parameters()`` order, each starting at a multiple of 64 elements; a bucket
ends after ``bucket_size`` elements (``--overlap-grad-reduce``) or around a tied embedding shared between pipeline
stages, and the bucket's end padding (to lcm(DP, 128)) is left out of the flat tensors.

**RNG** (``model_optim_rng.pt['rng_state']``: a list, one entry per DP rank when ``--data-parallel-random-init``,
else one): ``random_rng_state`` / ``np_rng_state`` / ``torch_rng_state`` are Python's, NumPy's and torch's CPU
generators, exactly ours (``rng['python'|'numpy'|'torch']``). ``cuda_rng_state`` and ``rng_tracker_states``
(``model-parallel-rng``, ``data-parallel-rng``, ``expert-parallel-rng``) are CUDA Philox states (16 bytes: seed,
offset): an import keeps them all per rank in the client state (``megatron_rng``; a re-export writes them back
unchanged, and a GPU resume here takes the default CUDA generator from ``rng['cuda']``); our TP dropout stream on the
CPU has no Megatron counterpart and is seeded afresh. An export of a run without CUDA states writes the states
Megatron's ``_set_random_seed`` / ``model_parallel_cuda_manual_seed`` would give a fresh run (seed + 100 x PP rank,
+ 2718 + TP rank for the model-parallel stream, + 1024 for the expert stream; offset 0).
"""

from __future__ import annotations

import math
import os
import struct
from typing import Any, Optional

import torch

from .megatron_lm import MegatronCheckpointError

SOURCE = "Megatron-LM core_v0.16.1"
DISTRIB_FILE = "distrib_optim.pt"
_EMBED_OR_OUTPUT = ("embedding.word_embeddings.weight", "output_layer.weight")


class OptimLayoutError(MegatronCheckpointError):
    """The optimizer state of a Megatron checkpoint is laid out in a way these rules do not recognise."""


# --------------------------------------------------------------------------------------------- parameter order
_LAYER_ORDER = [f"{m}.{p}" for m in ("input_layernorm", "self_attention.linear_proj", "self_attention.linear_qkv",
                                     "pre_mlp_layernorm", "mlp.linear_fc1", "mlp.linear_fc2")
                for p in ("weight", "bias")]


def _megatron_order(key: str) -> tuple:
    """Megatron-Core GPTModel's named_parameters() order (local spec), which its optimizer's indices follow."""
    if key.startswith("embedding."):
        return (0, key != "embedding.word_embeddings.weight")
    if key.startswith("decoder.layers."):
        _, _, i, rest = key.split(".", 3)
        return (1, int(i), _LAYER_ORDER.index(rest))
    return (2, ["decoder.final_layernorm.weight", "decoder.final_layernorm.bias", "output_layer.weight"].index(key))


def stages(cfg, full: dict[str, torch.Tensor], pp: int) -> list[dict[str, torch.Tensor]]:
    """Canonical full tensors -> per pipeline stage (stage-local layer numbers, Megatron's parameter order)."""
    per_stage = cfg.num_layers // pp
    out = []
    for s in range(pp):
        stage: dict[str, torch.Tensor] = {}
        for k in sorted(full, key=_megatron_order):
            v = full[k]
            if k.startswith("decoder.layers."):
                parts = k.split(".")
                i = int(parts[2])
                if not s * per_stage <= i < (s + 1) * per_stage:
                    continue
                parts[2] = str(i - s * per_stage)
                stage[".".join(parts)] = v
            elif k.startswith("embedding."):
                if s == 0:
                    stage[k] = v
            elif s == pp - 1 and (k != "output_layer.weight" or not cfg.tie_embeddings or pp > 1):
                stage[k] = v  # final norm, output layer (a tied one: the last stage's copy, as Megatron keeps it)
        out.append(stage)
    return out


# --------------------------------------------------------------------------------------------- param groups
def _override(name: str, shape: torch.Size, canonical_name: str, args) -> Optional[tuple]:
    over: dict[str, Any] = {}
    if len(shape) == 1 or name.endswith(".bias"):
        over["wd_mult"] = 0.0
    decoupled = getattr(args, "decoupled_lr", None)
    if decoupled is not None and canonical_name in _EMBED_OR_OUTPUT:
        over["max_lr"] = decoupled
        if getattr(args, "decoupled_min_lr", None) is not None:
            over["min_lr"] = args.decoupled_min_lr
    return tuple(sorted(over.items())) if over else None


def group_keys(ranks: list[list[tuple[str, torch.Size, str]]], args) -> list[Optional[tuple]]:
    """The sorted group keys over all ranks (each rank: [(name, shape, canonical name)] in parameter order)."""
    keys: list = []
    for params in ranks:
        for name, shape, canon in params:
            k = _override(name, shape, canon, args)
            if k not in keys:
                keys.append(k)
    return sorted(keys, key=lambda k: (k is not None, k or ()))


def groups_of(params: list[tuple[str, torch.Size, str]], keys: list, args) -> list[list[str]]:
    out: list[list[str]] = [[] for _ in keys]
    for name, shape, canon in params:
        out[keys.index(_override(name, shape, canon, args))].append(name)
    return out


def _group_fields(key: Optional[tuple], args) -> dict:
    over = dict(key or ())
    return {"wd_mult": over.get("wd_mult", 1.0), "lr_mult": 1.0, "is_expert_parallel": False,
            "is_decoupled_lr": False, "max_lr": over.get("max_lr", args.lr), "min_lr": over.get("min_lr", args.min_lr),
            "default_config": "max_lr" not in over}


def _check_groups(where: str, saved: list[dict], keys: list, groups: list[list[str]], args, sized: bool) -> None:
    if len(saved) != len(keys):
        raise OptimLayoutError(f"{where}: {len(saved)} optimizer param groups, {SOURCE}'s _get_param_groups rules give "
                               f"{len(keys)} for this model: a group layout not recognised (convert the weights alone "
                               f"with --no-load-optim, and resume with it)")
    for i, (g, key) in enumerate(zip(saved, keys)):
        want = _group_fields(key, args)
        if float(g.get("wd_mult", 1.0)) != want["wd_mult"] or (sized and len(g["params"]) != len(groups[i])):
            raise OptimLayoutError(f"{where}: optimizer param group {i} (wd_mult {g.get('wd_mult')}, "
                                   f"{len(g.get('params', []))} params) is not the group {SOURCE}'s rules give "
                                   f"(wd_mult {want['wd_mult']}, {len(groups[i])} params): a group layout not "
                                   f"recognised (convert the weights alone with --no-load-optim)")


# --------------------------------------------------------------------------------------------- reading
def _step_value(step) -> int:
    return int(step.item() if torch.is_tensor(step) else step)


def read_rank(path: str, sd: dict, params: list[tuple[str, torch.Size, str]], keys: list, args) -> Optional[dict]:
    """One rank's Adam state by parameter name: {"exp_avg", "exp_avg_sq", "param" (fp32 masters or None), "step"};
    None when the file holds no optimizer state."""
    opt = sd.get("optimizer")
    if opt is None:
        return None
    if isinstance(opt, list):
        raise OptimLayoutError(f"{path}: a chained optimizer of {len(opt)} optimizers (MoE or several model "
                               f"chunks) is not supported")
    groups = groups_of(params, keys, args)
    shapes = {n: s for n, s, _ in params}
    distrib = os.path.join(os.path.dirname(path), DISTRIB_FILE)
    if getattr(args, "use_distributed_optimizer", False):
        if not os.path.isfile(distrib):
            raise OptimLayoutError(f"{distrib} is missing: the run used --use-distributed-optimizer, whose Adam "
                                   f"state is saved there")
        return _read_distributed(distrib, opt, params, keys, groups, args)
    inner = opt["optimizer"] if "fp32_from_fp16_params" in opt or "grad_scaler" in opt else opt
    if "state" not in inner or "param_groups" not in inner:
        raise OptimLayoutError(f"{path}: 'optimizer' is neither torch's optimizer state dict nor Megatron's "
                               f"Float16OptimizerWithFloat16Params one")
    _check_groups(path, inner["param_groups"], keys, groups, args, sized=True)
    out: dict[str, Any] = {"exp_avg": {}, "exp_avg_sq": {}, "param": {} if "fp32_from_fp16_params" in opt else None}
    steps = set()
    for gi, (g, names) in enumerate(zip(inner["param_groups"], groups)):
        masters = opt["fp32_from_fp16_params"][gi] if out["param"] is not None else None
        for j, (idx, name) in enumerate(zip(g["params"], names)):
            st = inner["state"].get(idx)
            if not st or "exp_avg" not in st:
                raise OptimLayoutError(f"{path}: no Adam state for parameter {idx} ({name}): not an Adam run, or a "
                                       f"checkpoint saved before the first step")
            for s in ("exp_avg", "exp_avg_sq"):
                if tuple(st[s].shape) != tuple(shapes[name]):
                    raise OptimLayoutError(f"{path}: optimizer entry {idx} has shape {tuple(st[s].shape)}, the "
                                           f"parameter it maps to ({name}) {tuple(shapes[name])}: a group layout "
                                           f"not recognised")
                out[s][name] = st[s].float()
            steps.add(_step_value(st["step"]))
            if masters is not None:
                out["param"][name] = masters[j].float()
    if len(steps) != 1:
        raise OptimLayoutError(f"{path}: Adam steps differ per parameter ({sorted(steps)})")
    out["step"] = steps.pop()
    return out


def buffer_layout(params: list[tuple[str, torch.Size, str]], args, pp: int) -> tuple[dict[str, int], int]:
    """{name: offset in the flat distrib_optim tensors}, total unpadded numel: the DDP buffer of
    param_and_grad_buffer.py with the distributed optimizer (reverse order, starts padded to 64, buckets)."""
    dp = int(getattr(args, "data_parallel_size", 1) or 1)
    bucket_size = None
    if getattr(args, "overlap_grad_reduce", False):
        bucket_size = getattr(args, "ddp_bucket_size", None) or max(40000000, 1000000 * dp)
    divisor = math.lcm(dp, 128, 2 ** 16) if getattr(args, "ddp_pad_buckets_for_high_nccl_busbw", False) else \
        math.lcm(dp, 128)
    tied = not getattr(args, "untie_embeddings_and_output_weights", False) and pp > 1

    def pad(n: int, d: int) -> int:
        return -(-n // d) * d

    starts: dict[str, int] = {}
    start = bucket_start = 0
    unpadded_before = 0  # flat offset of the current bucket (earlier buckets without their end padding)
    in_bucket = 0
    end = 0
    for name, shape, canon in params[::-1]:
        numel = math.prod(shape)
        start = pad(start, 64)
        shared = tied and canon in _EMBED_OR_OUTPUT
        if shared and in_bucket:
            unpadded_before += start - bucket_start
            start = bucket_start = pad(start, divisor)
            in_bucket = 0
        end = start + numel
        starts[name] = unpadded_before + start - bucket_start
        in_bucket += 1
        if (bucket_size is not None and end - bucket_start >= bucket_size) or shared:
            unpadded_before += end - bucket_start
            start = bucket_start = pad(end, divisor)
            in_bucket = 0
        else:
            start = end
    if in_bucket:
        unpadded_before += end - bucket_start
    return starts, unpadded_before


def _read_distributed(path: str, opt: dict, params, keys, groups, args) -> dict:
    saved = torch.load(path, map_location="cpu", weights_only=False)
    if not saved.get("buckets_coalesced"):
        raise OptimLayoutError(f"{path}: the per-bucket distrib_optim.pt layout of Megatron-Core before 0.9 is not "
                               f"supported: load and re-save it in Megatron-LM (--ckpt-convert-update-legacy-dist-"
                               f"opt-format) first")
    buffers = [k for k in saved if k != "buckets_coalesced"]
    if buffers != [0] or len(saved[0]) != 1:
        raise OptimLayoutError(f"{path}: {len(buffers)} buffers / several dtypes (MoE, fp8 or mixed dtypes) are not "
                               f"supported")
    flat = next(iter(saved[0].values()))
    pp = int(getattr(args, "pipeline_model_parallel_size", 1) or 1)
    starts, total = buffer_layout(params, args, pp)
    if int(flat["numel_unpadded"]) != total:
        raise OptimLayoutError(f"{path}: {flat['numel_unpadded']} elements, the DDP buffer layout of {SOURCE} gives "
                               f"{total} for this rank's parameters (bucket size / padding not recognised)")
    inner = opt.get("optimizer", opt)
    _check_groups(path, inner["param_groups"], keys, groups, args, sized=False)
    steps = {g.get("step") for g in inner["param_groups"] if g.get("step") is not None}
    if len(steps) != 1:
        raise OptimLayoutError(f"{path}: the optimizer's param groups record steps {sorted(steps)}, not one")
    out: dict[str, Any] = {"step": _step_value(steps.pop())}
    for s in ("exp_avg", "exp_avg_sq", "param"):
        out[s] = {n: flat[s][starts[n]:starts[n] + math.prod(shape)].reshape(shape).float().clone()
                  for n, shape, _ in params}
    return out


# --------------------------------------------------------------------------------------------- writing
def rank_optimizer(params: list[tuple[str, torch.Size, str]], keys: list, args, job, moments: dict, masters:
                   Optional[dict], step: int, distributed: bool) -> tuple[dict, Optional[dict]]:
    """(model_optim_rng.pt['optimizer'], distrib_optim.pt contents or None) for one rank, as Megatron-Core's
    optimizers write them. `moments`: {"exp_avg"|"exp_avg_sq": {name: fp32}}; `masters`: {name: fp32} for
    bf16/fp16 runs (None: fp32)."""
    o = job.optim
    groups = groups_of(params, keys, args)
    base = {"lr": o.lr, "betas": (o.adam_beta1, o.adam_beta2), "eps": o.adam_eps, "weight_decay": o.weight_decay,
            "amsgrad": False, "maximize": False, "foreach": None, "capturable": False, "differentiable": False,
            "fused": None, "decoupled_weight_decay": True}
    pgs, state, idx = [], {}, 0
    for key, names in zip(keys, groups):
        g = {**base, **_group_fields(key, args)}
        g["weight_decay"] = o.weight_decay * g["wd_mult"]  # as OptimizerParamScheduler.step sets it
        g["params"] = list(range(idx, idx + len(names)))
        for n in names:
            state[idx] = {"step": torch.tensor(float(step)), "exp_avg": moments["exp_avg"][n].float().contiguous(),
                          "exp_avg_sq": moments["exp_avg_sq"][n].float().contiguous()}
            idx += 1
        pgs.append(g)
    half = masters is not None
    if not distributed:
        inner = {"state": state, "param_groups": pgs}
        if not half:
            return inner, None
        return {"optimizer": inner, "fp32_from_fp16_params": [[masters[n].float().contiguous() for n in names]
                                                              for names in groups]}, None
    for g in pgs:
        del g["params"]
        g["step"] = int(step)
    starts, total = buffer_layout(params, args, int(args.pipeline_model_parallel_size))
    flat = {s: torch.zeros(total) for s in ("param", "exp_avg", "exp_avg_sq")}
    for n, shape, _ in params:
        a, b = starts[n], starts[n] + math.prod(shape)
        flat["param"][a:b] = masters[n].reshape(-1)
        flat["exp_avg"][a:b] = moments["exp_avg"][n].reshape(-1)
        flat["exp_avg_sq"][a:b] = moments["exp_avg_sq"][n].reshape(-1)
    dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32
    # megatron/training/arguments.py: bf16 runs reduce gradients in fp32 (the buffer's grad dtype), fp16 runs in fp16
    grad = dtype if dtype == torch.float16 and not getattr(args, "accumulate_allreduce_grads_in_fp32", False) \
        else torch.float32
    return {"optimizer": {"param_groups": pgs}}, {"buckets_coalesced": True,
                                                  0: {(dtype, grad): {**flat, "numel_unpadded": total}}}


def scheduler_state(job, iteration: int) -> dict:
    """Megatron's OptimizerParamScheduler.state_dict for our schedule (its steps count samples)."""
    o, t = job.optim, job.training
    gbs = int(t.global_batch_size or t.micro_batch_size)
    decay = o.lr_decay_iters or t.train_iters or iteration
    warmup = o.lr_warmup_iters or (int(o.lr_warmup_fraction * decay) if o.lr_warmup_fraction else 0)
    return {"max_lr": o.lr, "lr_warmup_steps": warmup * gbs, "num_steps": iteration * gbs,
            "lr_decay_style": o.lr_decay_style, "lr_decay_steps": decay * gbs, "min_lr": o.min_lr,
            "start_wd": o.weight_decay, "end_wd": o.weight_decay, "wd_incr_style": "constant",
            "wd_incr_steps": (t.train_iters or iteration) * gbs}


# --------------------------------------------------------------------------------------------- RNG
def _philox(seed: int, offset: int = 0) -> torch.Tensor:
    """A CUDA generator's state (torch's CUDAGeneratorImpl::get_state: seed then offset, 8 bytes each)."""
    return torch.frombuffer(bytearray(struct.pack("<QQ", seed, offset)), dtype=torch.uint8).clone()


def rng_to_ours(rng_state: Any) -> Optional[dict]:
    """Our client-state "rng" from one rank's Megatron rng_state (its DP rank 0 entry), or None."""
    if not rng_state:
        return None
    entry = rng_state[0] if isinstance(rng_state, list) else rng_state
    ours = {"python": entry["random_rng_state"], "numpy": entry["np_rng_state"], "torch": entry["torch_rng_state"]}
    if entry.get("cuda_rng_state") is not None:
        ours["cuda"] = [entry["cuda_rng_state"]]
    return ours


def rng_from_ours(rng: Optional[dict], tp_rng: Optional[dict], seed: int, tp_rank: int, pp_rank: int) -> list[dict]:
    """Megatron's rng_state list for one (tp, pp) rank from our saved state (CPU generators exactly; CUDA states
    ours when the run had them, else a fresh run's)."""
    import random

    import numpy as np

    base = seed + 100 * pp_rank  # megatron/training/initialize.py: _set_random_seed
    if rng is None:  # none saved: the states Megatron's own seeding gives
        r, n, t = random.Random(base).getstate(), np.random.RandomState(base).get_state(), \
            torch.Generator().manual_seed(base).get_state()
    else:
        r, n, t = rng["python"], rng["numpy"], rng["torch"]
    cuda = (rng or {}).get("cuda")
    tp_cuda = ((tp_rng or {}).get("tensor_parallel") or {}).get("cuda")
    return [{"random_rng_state": r, "np_rng_state": n, "torch_rng_state": t,
             "cuda_rng_state": cuda[0].clone() if cuda else _philox(base),
             "rng_tracker_states": {"data-parallel-rng": _philox(base),
                                    "model-parallel-rng": tp_cuda.clone() if tp_cuda is not None else
                                    _philox(base + 2718 + tp_rank),
                                    "expert-parallel-rng": _philox(base + 1024)}}]
