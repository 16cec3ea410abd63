"""DeepSpeed universal checkpoints (deepspeed/checkpoint/ds_to_universal.py, DeepSpeed 0.19.8) <-> ours.

Every checkpoint we save carries ``universal_checkpoint_info`` (``universal_info`` below) in its client state, so
DeepSpeed's own tool converts it:

    python -m deepspeed.checkpoint.ds_to_universal --input_folder SAVE/iter_0000100 \\
        --output_folder SAVE/iter_0000100_universal          (needs ZeRO >= 1: it reads the optimizer shards)

The tool merges the ZeRO partitions and TP slices into one file per parameter and state:
``OUT/zero/<name>/{fp32,exp_avg,exp_avg_sq}.pt`` (each ``{"param": full tensor, "cat_dim": TP split dim}``), the
Adam step in ``step.pt``, ``OUT/zero/optimizer_state.pt`` and copies of the ``mp_rank_XX_model_states.pt`` files
(our client state: iteration, consumed samples, the job config). It decides how to merge each name from the
patterns: TP-replicated (norms, position embeddings, row-parallel biases: one slice), row-parallel (split along
dim 1: attention out, MLP down), everything else concatenated along dim 0 (column-parallel, vocabulary).

``read_ds_universal`` turns such a folder (of our model; pipeline parameter names are mapped back) into our
layout-free full state (weights and Adam moments), which loads at any TP x PP x DP x ZeRO layout: that is
``--universal-checkpoint`` / ``--load-universal`` and ``tools/convert_checkpoint.py --from ds-universal``.
``write_ds_universal`` writes the same folder layout from one of our checkpoints (``--to ds-universal``).
"""

from __future__ import annotations

import json
import os
import re
import shutil

import torch

from ..config.base import ConfigError
from ..config.job import JobConfig
from . import deepspeed_compat as dsc
from .reshard import FullState

UNIVERSAL_VERSION = 0.4  # deepspeed/checkpoint/constants.py UNIVERSAL_CHECKPOINT_VERSION_VALUE
ROW_PARALLEL = [r".*attn\.o_proj\.weight$", r".*mlp\.(down_proj|fc_out)\.weight$"]
REPLICATED = [r".*norm[12]\.(weight|bias)$", r".*final_norm\.(weight|bias)$", r".*embed\.position\.weight$",
              r".*attn\.o_proj\.bias$", r".*mlp\.(down_proj|fc_out)\.bias$"]


class UniversalCheckpointError(ConfigError):
    """A universal checkpoint folder cannot be read or written as asked."""


def universal_info() -> dict:
    """The ``universal_checkpoint_info`` DeepSpeed's ds_to_universal needs in the client state."""
    return {"universal_checkpoint_version": UNIVERSAL_VERSION,
            # the first and last pipeline stages each hold the tied embedding module; the first stage's copy is
            # the model's (the last one's position table gets no gradient, only weight decay)
            "pipeline_replicated_parameter_patterns": [r"^tied_modules\."],
            "tp_replicated_parameter_patterns": REPLICATED,
            "parameter_with_row_parallelism_patterns": ROW_PARALLEL}


def tp_dim(name: str) -> int | None:
    """The TP split dim these patterns give a parameter (None: replicated); equals tensor_parallel.partition_spec."""
    if any(re.match(p, name) for p in REPLICATED):
        return None
    return 1 if any(re.match(p, name) for p in ROW_PARALLEL) else 0


def _gpt_name(name: str) -> str:
    from .reshard import _gpt_name as pipe_to_gpt
    return pipe_to_gpt(name)


def find_universal(path: str) -> str:
    """A universal folder: PATH itself (holding zero/), or the one PATH/latest_universal names."""
    if os.path.isdir(os.path.join(path, "zero")):
        return path
    latest = os.path.join(path, "latest_universal")
    if os.path.isfile(latest):
        tag = open(latest).read().strip()
        return os.path.join(path, tag)
    raise UniversalCheckpointError(f"{path} is not a DeepSpeed universal checkpoint (no zero/ folder, no "
                                   f"latest_universal): make one with python -m deepspeed.checkpoint.ds_to_universal "
                                   f"--input_folder SAVE/iter_N --output_folder SAVE/iter_N_universal")


def read_ds_universal(path: str) -> tuple[JobConfig | None, FullState]:
    """(our job config from the copied client state, or None; the full state with Adam moments)."""
    folder = find_universal(path)
    zero = os.path.join(folder, "zero")
    module, exp_avg, exp_avg_sq, step = {}, {}, {}, None
    for name in sorted(os.listdir(zero)):
        d = os.path.join(zero, name)
        if not os.path.isdir(d):
            continue
        gpt = _gpt_name(name)
        for state, out in (("fp32", module), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
            f = os.path.join(d, f"{state}.pt")
            if os.path.exists(f):
                t = torch.load(f, map_location="cpu", weights_only=False)
                out[gpt] = (t["param"] if isinstance(t, dict) else t).float()
        if step is None and os.path.exists(os.path.join(d, "step.pt")):
            s = torch.load(os.path.join(d, "step.pt"), map_location="cpu", weights_only=False)
            step = int(s.item() if torch.is_tensor(s) else s)
    if not module:
        raise UniversalCheckpointError(f"{zero} holds no <param>/fp32.pt files")
    client: dict = {}
    job = None
    ranks = dsc.model_states_files(os.listdir(folder))
    if ranks:
        sd = torch.load(os.path.join(folder, ranks[0]), map_location="cpu", weights_only=False)
        client = {k: sd[k] for k in ("iteration", "consumed_samples", "tokenizer_fingerprint") if k in sd}
        if sd.get("job_config"):
            job = JobConfig()
            job.update(sd["job_config"])
    full_moments = len(exp_avg) == len(module) and len(exp_avg_sq) == len(module)
    return job, FullState(module=module, exp_avg=exp_avg if full_moments else None,
                          exp_avg_sq=exp_avg_sq if full_moments else None, step=step, client_state=client)


def write_ds_universal(job: JobConfig, state: FullState, out_dir: str, tokenizer_dir: str | None = None) -> str:
    """DeepSpeed's universal folder layout from our full state (TP-merged tensors, one file per parameter)."""
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise UniversalCheckpointError(f"--save {out_dir} is not empty: choose a new directory")
    zero = os.path.join(out_dir, "zero")
    for name, t in state.module.items():
        d = os.path.join(zero, name)
        os.makedirs(d)
        dim = tp_dim(name)
        for key, tensors in (("fp32", state.module), ("exp_avg", state.exp_avg), ("exp_avg_sq", state.exp_avg_sq)):
            if tensors is None:
                continue
            entry = {"param": tensors[name].float().contiguous()}
            if dim is not None:
                entry["cat_dim"] = dim
            torch.save(entry, os.path.join(d, f"{key}.pt"))
        if state.step is not None:
            torch.save(torch.tensor(float(state.step)), os.path.join(d, "step.pt"))
    lr = job.optim.lr
    torch.save({"param_groups": [{"lr": lr, "betas": (job.optim.adam_beta1, job.optim.adam_beta2),
                                  "eps": job.optim.adam_eps, "weight_decay": job.optim.weight_decay}]},
               os.path.join(zero, "optimizer_state.pt"))
    client = {**state.client_state, "universal_checkpoint_info": universal_info(), "job_config": job.to_dict(),
              "module": None}
    torch.save(client, os.path.join(out_dir, dsc.model_states_file(0)))
    if tokenizer_dir:
        shutil.copytree(tokenizer_dir, os.path.join(out_dir, "tokenizer"))
    parent, tag = os.path.split(os.path.normpath(out_dir))
    with open(os.path.join(parent, "latest_universal"), "w") as f:
        f.write(tag)
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump({"iteration": state.client_state.get("iteration"), "format": "deepspeed-universal"}, f)
    return out_dir


def load_universal(engine, job: JobConfig, path: str, check_compatible=None) -> dict:
    """Collective. --universal-checkpoint: a universal folder (weights and, unless --no-load-optim/--finetune, Adam
    moments) into `engine` at whatever TP x PP x DP x ZeRO layout it runs; returns the client state."""
    from .reshard import load_full_into_engine

    saved, state = read_ds_universal(path)
    if saved is not None and check_compatible is not None:
        check_compatible(saved, job)
    t, tp = job.training, job.parallel.tensor_parallel
    mpu = getattr(engine, "mpu", None)
    tp_rank = mpu.get_tensor_model_parallel_rank() if (mpu is not None and tp > 1) else 0
    load_full_into_engine(engine, state, job.model, tp=tp, tp_rank=tp_rank,
                          load_optimizer=t.load_optim and not t.finetune)
    return {"iteration": 0, "consumed_samples": 0, **state.client_state}
