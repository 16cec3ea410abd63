"""Pipeline parallelism: our GPT as a DeepSpeed `PipelineModule` (Huang et al., 2019 GPipe / Narayanan et al., 2019
PipeDream-1F1B schedule, as DeepSpeed's pipeline engine runs it).

The GPT is carved into pipeline layers that REUSE its modules. It is either initialized whole (and sharded by the
TP plan), or, what the trainer does, built on the `meta` device with only its init seeds attached
(the job seed, model.init.module_seeds): then each rank materialises only the layers of its own stage, right
after DeepSpeed picks them and before anything touches their storage. Both give every layout identical weights:

    layer 0        EmbeddingPipe   (input_ids, position_ids) -> (hidden, position_ids)   [tied key "embed"]
    layer 1..L     BlockPipe       (hidden, position_ids) -> (hidden, position_ids)      RoPE from position_ids
    layer L+1      FinalNormPipe   (hidden, position_ids) -> hidden
    layer L+2      head            hidden -> logits (B, T, V/tp): the tied embedding (TiedLayerSpec "embed", its
                                   gradient all-reduced between first and last stage) or HeadPipe(lm_head);
                                   with a `head_loss_fn` it passes hidden through and the loss runs the head

Position ids travel between stages beside the hidden states (integer tensors carry no gradient, DeepSpeed skips
them in the backward sends), so RoPE and reset position ids work on every stage. Each wrapper holds the original
module under its GPT attribute path, so a pipeline layer's state-dict keys ARE the GPT's keys ("layers.3.attn.
q_proj.weight"): the union of DeepSpeed's `layer_XX-model_YY-model_states.pt` files is the GPT state dict of TP
rank YY (see `gpt_keys_of_layer`).

Batches: DeepSpeed feeds `(inputs, labels)` tuples, inputs to the first stage and labels to the last;
`to_pipeline_batch` / `batch_from_labels` translate our batch dicts, the labels being the batch entries the
objective names (`label_keys(train)`, e.g. labels + loss_mask; this module knows no objective). The loss on the
last stage is the objective's (vocab-parallel under TP), computed by a `loss_fn(logits, batch, train) -> (loss,
parts)` the trainer passes in; or, while `set_head_in_loss(True)` (the trainer's loss path says so), the head layer
hands on the final hidden states and `head_loss_fn(head, hidden, batch, train) -> (loss, parts)` applies the head
itself (the trainer's: the fused head + loss kernel, so the last stage never holds (B, T, V/tp) logits).

Gradient norm: DeepSpeed's fp32 (ZeRO-0) clipping counts parameters that are not tensor-parallel on model-parallel
rank 0 only, i.e. on the FIRST pipeline stage only; `clip_grad_norm_pipeline` counts them on TP rank 0 of every
stage and the tied copy once. ZeRO-1's own norm is correct with PP and is used as is.
"""

from __future__ import annotations

import functools
from typing import Callable, Iterable, Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn

from ..data.batch import document_attention_mask
from ..errors import UserError
from ..model.rope import rotary_cos_sin
from . import deepspeed_compat as dsc
from .groups import ParallelGroups
from . import random as tp_random
from .random import RNGTracker

TIED_KEY = "embed"
PARTITION_METHODS = ("parameters", "uniform")

# The batch entries the loss reads (labels + loss_mask of data/batch.make_batch) unless the objective names others.
NEXT_TOKEN_LABELS = ("labels", "loss_mask")

LossFn = Callable[[torch.Tensor, dict, bool], "tuple[torch.Tensor, dict]"]
HeadLossFn = Callable[[nn.Module, torch.Tensor, dict, bool], "tuple[torch.Tensor, dict]"]
LabelKeys = Callable[[bool], "tuple[str, ...]"]  # train? -> the batch entries the pipeline carries as labels


class PipelineConfigError(UserError, ValueError):
    """The pipeline layout cannot be built as asked (unknown partition method, a stage left without layers)."""


# ----------------------------------------------------------------------------- the pipeline layers
class EmbeddingPipe(nn.Module):
    """First stage. Also the tied head's owner on the last stage (see `tied_logits`)."""

    def __init__(self, embed: nn.Module):
        super().__init__()
        self.embed = embed

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        input_ids, position_ids, *documents = inputs  # (B, T) long each; document ids with --reset-attention-mask
        return (self.embed(input_ids, position_ids), position_ids, *documents)  # (B, T, H) [(B, T/tp, H) under SP]


def tied_logits(owner: EmbeddingPipe, hidden: torch.Tensor) -> torch.Tensor:
    """Tied head: hidden (B, T, H) -> logits (B, T, V/tp) with this rank's vocabulary rows of the embedding; or,
    while the loss applies the head (`GPTPipe.set_head_in_loss`), hidden passes through."""
    if getattr(owner, "head_in_loss", False):
        return hidden
    return torch.nn.functional.linear(hidden, owner.embed.word.weight)


class BlockPipe(nn.Module):
    """One transformer block; `layers` is a one-entry ModuleDict so keys read `layers.<i>.…` as in the GPT."""

    def __init__(self, index: int, block: nn.Module, rotary_dims: Optional[int], rotary_base: float):
        super().__init__()
        self.key = str(index)
        self.layers = nn.ModuleDict({self.key: block})
        self.rotary_dims, self.rotary_base = rotary_dims, rotary_base

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x, position_ids, *documents = inputs
        rope = None
        if self.rotary_dims:
            # Recomputed per block (a few elementwise ops on (B, T, r)): cheaper than shipping cos/sin between
            # stages, which would also need gradients.
            rope = rotary_cos_sin(position_ids, self.rotary_dims, self.rotary_base, x.dtype)
        # Likewise the (B, 1, T, T) same-document mask is rebuilt from the (B, T) document ids it travels as.
        mask = document_attention_mask(documents[0]) if documents else None
        return (self.layers[self.key](x, rope, None, mask), position_ids, *documents)


class FinalNormPipe(nn.Module):
    def __init__(self, final_norm: nn.Module):
        super().__init__()
        self.final_norm = final_norm

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.final_norm(inputs[0])  # TP: its hook brings the output into the TP region


class HeadPipe(nn.Module):
    """Untied head. `in_loss`: hidden passes through and the loss applies lm_head (see `head_loss_fn`)."""

    def __init__(self, lm_head: nn.Module):
        super().__init__()
        self.lm_head = lm_head
        self.in_loss = False

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden if self.in_loss else self.lm_head(hidden)  # (B, T, H) or (B, T, V/tp)


CHECKPOINTABLE = [EmbeddingPipe.__name__, BlockPipe.__name__, FinalNormPipe.__name__]


# ----------------------------------------------------------------------------- batches
def to_pipeline_batch(batch: dict, label_keys: tuple[str, ...] = NEXT_TOKEN_LABELS
                      ) -> tuple[tuple[torch.Tensor, ...], tuple]:
    """Our batch dict -> DeepSpeed's `((input_ids, position_ids[, document_ids]), labels)` (document ids with
    --reset-attention-mask); labels are the tensors `batch[k]` for k in `label_keys`, in that order."""
    labels = tuple(batch[k] for k in label_keys)
    documents = (batch["document_ids"],) if "document_ids" in batch else ()
    return (batch["input_ids"], batch["position_ids"], *documents), labels


def batch_from_labels(labels: tuple, label_keys: tuple[str, ...] = NEXT_TOKEN_LABELS) -> dict:
    """Inverse of the label half of `to_pipeline_batch`: the dict the objective's loss reads."""
    labels = tuple(labels)
    if len(labels) != len(label_keys):
        raise ValueError(f"the pipeline carried {len(labels)} label tensors for the keys {label_keys}")
    return dict(zip(label_keys, labels))


class PipelineBatches:
    """Iterator adapter: our batch dicts -> pipeline tuples (what `engine.train_batch(data_iter)` pulls)."""

    def __init__(self, batches: Iterator[dict], label_keys: tuple[str, ...] = NEXT_TOKEN_LABELS):
        self.batches, self.label_keys = batches, tuple(label_keys)

    def __iter__(self):
        return self

    def __next__(self):
        return to_pipeline_batch(next(self.batches), self.label_keys)


# ----------------------------------------------------------------------------- activation checkpointing
def make_checkpoint_fn(tracker: Optional[RNGTracker]):
    """DeepSpeed calls `fn(run_layers, *inputs)` for each chunk of N layers: non-reentrant torch checkpointing
    (inputs need not require grad, so the embedding may sit in a chunk) that also replays the TP RNG tracker's
    stream during recomputation (random.checkpoint), so dropout inside TP regions draws the same masks twice."""
    return functools.partial(tp_random.checkpoint, tracker=tracker)


# ----------------------------------------------------------------------------- the module
@functools.lru_cache(maxsize=None)
def _pipeline_module_class():
    """GPTPipe, defined lazily so importing this module does not import DeepSpeed."""

    class GPTPipe(dsc.pipeline_module_base()):
        """DeepSpeed PipelineModule over our GPT's modules; the loss is the objective's (see module docstring).

        `materialize(layer)`, if given, is called on each of this stage's pipeline layers (tied ones included)
        right after DeepSpeed builds them and before it moves them to the device or broadcasts tied weights."""

        def __init__(self, *args, materialize: Optional[Callable[[nn.Module], None]] = None, **kwargs):
            object.__setattr__(self, "_materialize", materialize)  # before nn.Module.__init__: a plain attribute
            super().__init__(*args, **kwargs)

        def after_build(self):
            if self._materialize is None:
                return
            for name, child in self.named_children():
                # children are the local layers ("<index>") and tied_modules {key: layer}; inside each, module
                # names are the GPT's
                for layer in (child.values() if name == "tied_modules" else [child]):
                    self._materialize(layer)
            object.__setattr__(self, "_materialize", None)  # done: do not keep the seeds alive

        def attach_loss(self, loss_fn: LossFn, part_names: tuple[str, ...],
                        head_loss_fn: Optional[HeadLossFn] = None, label_keys: Optional[LabelKeys] = None) -> None:
            self._objective_loss = loss_fn
            self._head_loss = head_loss_fn
            self._label_keys = label_keys or (lambda train: NEXT_TOKEN_LABELS)
            self.head_in_loss = False
            self.part_names = tuple(part_names)
            self._last_parts: dict = {}
            self.loss_fn = self._loss

        def set_head_in_loss(self, on: bool) -> None:
            """Whether the head layer hands on hidden states and the loss applies the head (`head_loss_fn`), or the
            head layer computes logits. Set once the engine exists: the trainer's loss path depends on its optimizer
            (see `loss_may_produce_gradients`)."""
            on = bool(on and self._head_loss is not None)
            self.head_in_loss = on
            for layer in self.forward_funcs:
                if isinstance(layer, HeadPipe):
                    layer.in_loss = on
            if TIED_KEY in self.tied_modules:
                self.tied_modules[TIED_KEY].head_in_loss = on

        def lm_head(self) -> nn.Module:
            """The last stage's head module (GPT.head()): the tied word embedding or lm_head."""
            if TIED_KEY in self.tied_modules:
                return self.tied_modules[TIED_KEY].embed.word
            return next(f for f in self.forward_funcs if isinstance(f, HeadPipe)).lm_head

        def _loss(self, outputs: torch.Tensor, labels) -> torch.Tensor:
            batch = batch_from_labels(labels, self._label_keys(self.training))
            if self.head_in_loss:  # outputs: final hidden states (B, T, H); the head runs in the loss
                loss, parts = self._head_loss(self.lm_head(), outputs, batch, self.training)
            else:  # outputs: logits (B, T, V/tp)
                loss, parts = self._objective_loss(outputs, batch, self.training)
            self._last_parts = {k: torch.as_tensor(float(v)) for k, v in parts.items()}
            return loss

        def get_additional_losses(self):
            """The objective's logged loss parts (MIM: fwd_ce, bwd_ce, agreement) for the engine to average over
            micro batches and DP and broadcast to every stage; non-last stages only report the names."""
            if not self.part_names or not self.training:
                return None
            return {k: self._last_parts.get(k, torch.zeros(())) for k in self.part_names}

    return GPTPipe


def loss_may_produce_gradients(optimizer) -> bool:
    """Whether parameters used only in the pipeline's loss function (the head, with `head_loss_fn`) keep their
    gradients under this DeepSpeed optimizer. DeepSpeed's BF16_Optimizer (bf16 pipelines at ZeRO-0) clears the
    model's gradients in a backward hook that fires when backward reaches the pipeline module's output, i.e.
    after the loss function's own backward ran: the head's gradient was wiped (measured: lm_head not updated at
    all, a tied head's share of the embedding gradient lost). Every other optimizer keeps them."""
    return not dsc.is_bf16_zero0_optimizer(optimizer)


def _layer_specs(model: nn.Module) -> list:
    from deepspeed.pipe import LayerSpec, TiedLayerSpec

    cfg = model.cfg
    tied = cfg.tie_embeddings
    rotary = cfg.rotary_dims if cfg.position_embedding == "rope" else None
    specs: list = []
    if tied:
        specs.append(TiedLayerSpec(TIED_KEY, EmbeddingPipe, model.embed, tied_weight_attr="embed.word.weight"))
    else:
        specs.append(LayerSpec(EmbeddingPipe, model.embed))
    for i, block in enumerate(model.layers):
        specs.append(BlockPipe(i, block, rotary, cfg.rotary_base))
    specs.append(FinalNormPipe(model.final_norm))
    if tied:
        specs.append(TiedLayerSpec(TIED_KEY, EmbeddingPipe, model.embed, forward_fn=tied_logits,
                                   tied_weight_attr="embed.word.weight"))
    else:
        specs.append(HeadPipe(model.lm_head))
    return specs


def gpt_keys_of_layer(num_layers: int, layer_index: int, tied: bool) -> Optional[str]:
    """What pipeline layer `layer_index` holds, in GPT terms (for tools reading `layer_XX-*` files): 'embed',
    'layers.<i>', 'final_norm' or 'lm_head' (None for the tied head, which is saved with layer 0)."""
    if layer_index == 0:
        return "embed"
    if layer_index <= num_layers:
        return f"layers.{layer_index - 1}"
    if layer_index == num_layers + 1:
        return "final_norm"
    return None if tied else "lm_head"


def pipeline_model_states(tag_dir: str) -> list[dict[str, torch.Tensor]]:
    """Read a pipeline checkpoint's weights without a process group: one GPT state dict per TP rank (keys as in
    `GPT.state_dict()`, tensors this TP rank's shards), merged from DeepSpeed's `layer_XX-model_YY-model_states.pt`
    files (layer XX of `_layer_specs`, TP rank YY; the tied head has no file: it is the embedding)."""
    import os

    files = sorted(f for f in os.listdir(tag_dir) if dsc.LAYER_FILE.fullmatch(f)) if os.path.isdir(tag_dir) else []
    if not files:
        raise FileNotFoundError(f"{tag_dir} has no layer_*-model_states.pt files: not a pipeline checkpoint")
    per_rank: dict[int, dict[str, torch.Tensor]] = {}
    for f in files:
        rank = int(dsc.LAYER_FILE.fullmatch(f).group(2) or 0)
        state = torch.load(os.path.join(tag_dir, f), map_location="cpu", weights_only=True)
        per_rank.setdefault(rank, {}).update(state)
    return [per_rank[r] for r in sorted(per_rank)]


def build_pipeline(model: nn.Module, groups: ParallelGroups, loss_fn: LossFn, *,
                   partition_method: str = "parameters", checkpoint_interval: int = 0,
                   part_names: Iterable[str] = (), release_other_stages: bool = True,
                   seed: Optional[int] = None, head_loss_fn: Optional[HeadLossFn] = None,
                   label_keys: Optional[LabelKeys] = None, rng_tracker=None):
    """Carve `model` (a GPT, initialized, already sharded by the TP plan) into this rank's pipeline stage.

    Or `model` is a meta-device GPT (TP-sharded on meta if TP > 1) and `seed` the job seed: then only this stage's
    parameters are created and initialized (this rank's slice of the single-process weights, one full tensor at a
    time), and the rest of the GPT stays on meta.

    Collective over the whole world (DeepSpeed builds its grid and tied-weight groups). Every rank must pass a
    model with identical weights (same seed). `partition_method`: "parameters" (balance trainable parameters;
    DeepSpeed's default), "uniform" (balance layer counts) or "type:<regex>". `checkpoint_interval` N > 0
    recomputes activations in chunks of N pipeline layers of a stage (the embedding and final norm count as
    layers; the head is never recomputed). With `release_other_stages` the other stages' parameters are moved
    to the meta device (the GPT passed in is consumed). With `seed` (the job seed) the stage's dropout streams are
    re-seeded Megatron-style (random.seed_parallel_rng: default stream seed + 100 x stage, TP stream + 2718 + TP
    rank), so different stages do not draw identical dropout masks. With `head_loss_fn` the head layer passes the
    hidden states through and the last stage's loss is `head_loss_fn(head module, hidden, batch, train)` (switch
    with `set_head_in_loss`). `label_keys(train)` names the batch entries the loss reads (default labels +
    loss_mask). `rng_tracker`: a TP-sharded model's dropout stream (random.tp_rng_tracker; re-seeded per stage
    with `seed`), used by the recomputation. Returns the
    `PipelineModule` to hand to `deepspeed.initialize(model=..., mpu=None)` (the pipeline grid serves as mpu)."""
    method = partition_method.lower()
    if method not in PARTITION_METHODS and not method.startswith("type:"):
        raise PipelineConfigError(f"unknown pipeline partition method '{partition_method}': use 'parameters', "
                                  f"'uniform' or 'type:<layer class regex>' (e.g. type:BlockPipe)")
    n_layers = model.cfg.num_layers + 3
    if groups.pp_size > n_layers:
        raise PipelineConfigError(f"{groups.pp_size} pipeline stages for {n_layers} pipeline layers (embedding, "
                                  f"{model.cfg.num_layers} blocks, norm, head): use fewer stages")
    _ensure_deepspeed_comm()
    tracker = rng_tracker
    specs = _layer_specs(model)
    pipe = _pipeline_module_class()(
        layers=specs, topology=groups.topology(), partition_method=method,
        activation_checkpoint_interval=checkpoint_interval, activation_checkpoint_func=make_checkpoint_fn(tracker),
        checkpointable_layers=list(CHECKPOINTABLE), materialize=_stage_materializer(model, seed))
    parts = [int(p) for p in pipe.parts]
    empty = [s for s in range(groups.pp_size) if parts[s + 1] <= parts[s]]
    if empty:
        raise PipelineConfigError(f"pipeline partition '{partition_method}' leaves stage(s) {empty} without layers "
                                  f"(boundaries {parts}): use --parallel.pipeline_partition uniform or fewer stages")
    pipe.attach_loss(loss_fn, tuple(part_names), head_loss_fn, label_keys)
    pipe.set_head_in_loss(head_loss_fn is not None)
    if seed is not None:
        stage_streams = tp_random.seed_parallel_rng(seed, groups.tp_rank, groups.pp_rank)
        if tracker is not None:
            tracker.set_states(stage_streams.get_states())
    if release_other_stages:
        _release(specs, parts[groups.pp_rank], parts[groups.pp_rank + 1], pipe)
    return pipe


def _stage_materializer(model: nn.Module, seed: Optional[int]) -> Optional[Callable[[nn.Module], None]]:
    """For a meta-device GPT: a function creating one pipeline layer's parameters from the job `seed` (the
    per-module seeds are `module_seeds` of the whole meta GPT, as a single-process build draws them). All the
    layers of the stage draw through one scratch buffer, freed with the function once the stage is built. None for
    a model that already holds its weights."""
    from ..model.init import module_seeds
    from .sharded_init import Scratch, materialize_gpt_params

    if not any(p.device.type == "meta" for p in model.parameters()):
        return None
    if seed is None:
        raise ValueError("build_pipeline got a meta-device GPT but no seed: pass the job seed to initialise it")
    seeds = module_seeds(model, torch.Generator().manual_seed(seed))
    cfg, scratch = model.cfg, Scratch("cpu")
    return lambda layer: materialize_gpt_params(layer, cfg, seeds, "cpu", scratch)


def _ensure_deepspeed_comm() -> None:
    """PipelineModule talks through deepspeed.comm; attach it to an already initialized torch.distributed (test
    helpers and some launchers initialize torch only)."""
    import deepspeed

    from .engine import keep_deepspeed_from_compiling

    if not deepspeed.comm.is_initialized():
        keep_deepspeed_from_compiling()  # no JIT build at start-up (engine.UNUSED_JIT_OPS)
        deepspeed.init_distributed(dist_backend=dist.get_backend(), auto_mpi_discovery=False, verbose=False)


def _release(specs: list, start: int, stop: int, pipe: nn.Module) -> None:
    """Free the parameters of layers other stages own (they stay referenced by DeepSpeed's layer list)."""
    local = {id(p) for p in pipe.parameters()}
    for i, spec in enumerate(specs):
        if start <= i < stop:
            continue
        module = spec if isinstance(spec, nn.Module) else spec.module_args[0]
        if not any(id(p) in local for p in module.parameters()):
            module.to("meta")


def pipeline_ds_config(ds_config: dict, sequence_parallel: bool) -> dict:
    """Adjust the DeepSpeed config for the pipeline engine. By default DeepSpeed sends each stage's output split
    across the TP group and all-gathers it on the receiving side ("pipe_partitioned"/"grad_partitioned"), which
    assumes the activation is the same on every TP rank; under sequence parallelism each TP rank holds another
    slice of the sequence, so the reassembled tensor would be wrong: send whole shards instead."""
    if sequence_parallel:
        pipe = dict(ds_config.get("pipeline", {}))
        pipe.update(pipe_partitioned=False, grad_partitioned=False)
        ds_config = {**ds_config, "pipeline": pipe}
    return ds_config


# ----------------------------------------------------------------------------- gradient norm
def pipeline_grad_norm(parameters: Iterable[torch.nn.Parameter], groups: ParallelGroups) -> torch.Tensor:
    """Global L2 norm of the gradients of the whole model, from any rank (collective over TP x PP).

    Tensor-parallel shards (`tensor_model_parallel`) are counted on every TP rank, replicated parameters on TP rank
    0 only, the tied embedding's second copy (`ds_pipe_replicated`, set by DeepSpeed) not at all. The result is
    the same on every rank (DP replicas hold all-reduced gradients)."""
    sq = torch.zeros((), dtype=torch.float32)
    for p in parameters:
        if p.grad is None or dsc.is_tied_copy(p):
            continue
        if getattr(p, "tensor_model_parallel", False) or groups.tp_rank == 0:
            sq = sq + p.grad.detach().float().pow(2).sum().to(sq.device)
    if groups.mp_group is not None and groups.tp_size * groups.pp_size > 1:
        dist.all_reduce(sq, group=groups.mp_group)
    return sq.sqrt()


def clip_grad_norm_pipeline(parameters: Iterable[torch.nn.Parameter], max_norm: float,
                            groups: ParallelGroups) -> float:
    """Scale gradients in place so the global norm is at most `max_norm` (inf: measure only); returns the norm."""
    params = [p for p in parameters if p.grad is not None]
    norm = pipeline_grad_norm(params, groups)
    if max_norm != float("inf"):
        coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        for p in params:
            p.grad.detach().mul_(coef.to(p.grad.device))
    return float(norm)


class StepClipper:
    """Clips (and records the norm) right before each optimizer step of the pipeline engine, which runs backward,
    reductions and the step inside `train_batch` with no hook of its own. Used on the plain fp32 ZeRO-0 path,
    where DeepSpeed's clipping would count the first stage only. `norm` is the last step's value."""

    def __init__(self, optimizer: torch.optim.Optimizer, module: nn.Module, max_norm: float,
                 groups: ParallelGroups):
        self.module, self.max_norm, self.groups = module, max_norm, groups
        self.norm = float("nan")
        self.handle = optimizer.register_step_pre_hook(self._hook)

    def _hook(self, optimizer, args, kwargs):
        self.norm = clip_grad_norm_pipeline(self.module.parameters(), self.max_norm, self.groups)


__all__ = ["EmbeddingPipe", "BlockPipe", "FinalNormPipe", "HeadPipe", "build_pipeline", "to_pipeline_batch",
           "batch_from_labels", "PipelineBatches", "pipeline_grad_norm", "clip_grad_norm_pipeline", "StepClipper",
           "make_checkpoint_fn", "gpt_keys_of_layer", "pipeline_model_states", "pipeline_ds_config",
           "loss_may_produce_gradients",
           "PipelineConfigError"]
