"""Universal checkpoints that Megatron-DeepSpeed's own runs produce (DeepSpeed's ds_to_universal over a
Megatron-DeepSpeed ZeRO checkpoint) -> ours, with the Adam moments.

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

import os
import re

import torch

from ..config.job import JobConfig
from ..parallel import deepspeed_compat as dsc
from ..parallel.reshard import FullState
from . import megatron_lm as mlm
from .megatron_deepspeed import _qkv_to_groups

_STATES = ("fp32", "exp_avg", "exp_avg_sq")
_SWIGLU_INFO = "parameter_with_2_sub_params_cat_dim_0"


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
    args = client["args"]
    job = mlm.job_from_args(args)
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
            t = torch.load(f, map_location="cpu", weights_only=False)
            t = (t["param"] if isinstance(t, dict) else t).float()
            if ".self_attention.linear_qkv." in key and qkv_layout == "blocks":
                t = torch.cat([_qkv_to_groups(cfg, c, tp) for c in t.chunk(tp)])
            if ".mlp.linear_fc1." in key and cfg.activation == "swiglu" and \
                    not any(re.match(p, name) for p in swiglu_merged):  # TP slices each [gate_r; up_r]
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
                      "imported_from": f"megatron-deepspeed universal {folder} (TP{tp})"})
