"""Every touch of DeepSpeed internals, in one place: private methods, optimizer-wrapper attributes, internal module
paths and the on-disk checkpoint layout. Everything else in the package uses DeepSpeed's public API
(`deepspeed.initialize`, `deepspeed.init_distributed`, `deepspeed.comm`, `deepspeed.zero.Init`/`GatheredParameters`,
`deepspeed.pipe`, `deepspeed.utils.safe_*`, `deepspeed.accelerator`).

Tested with DeepSpeed 0.19 (`setup.py` pins `deepspeed>=0.19,<0.20`). `tests/unit/test_deepspeed_compat.py` checks
that every internal name listed in `INTERNAL_NAMES` / `ON_DISK_KEYS` still exists in the installed DeepSpeed (so an
upgrade fails there, in one place, naming what moved) and that no other module of the package touches them.
Each entry below says which DeepSpeed behaviour it works around.
"""

from __future__ import annotations

import contextlib
import functools
import re
from typing import Iterator

import torch

TESTED_VERSION = "0.19"

# (module, dotted attribute) of every internal DeepSpeed name used below: the canary test resolves each one.
INTERNAL_NAMES = (
    ("deepspeed.runtime.zero.partition_parameters", "Init._zero_init_param"),
    ("deepspeed.runtime.zero.partition_parameters", "Init._convert_to_deepspeed_param"),
    ("deepspeed.runtime.fp16.fused_optimizer", "FP16_Optimizer"),
    ("deepspeed.runtime.fp16.unfused_optimizer", "FP16_UnfusedOptimizer"),
    ("deepspeed.runtime.bf16_optimizer", "BF16_Optimizer"),
    ("deepspeed.runtime.bf16_optimizer", "BF16_Optimizer._lazy_init_hp_params_optimizer_state"),
    ("deepspeed.runtime.zero.stage_1_and_2", "DeepSpeedZeroOptimizer._lazy_init_hp_params_optimizer_state"),
    ("deepspeed.runtime.pipe.module", "PipelineModule._build"),
    ("deepspeed.runtime.pipe.module", "PipelineModule._synchronize_tied_weights"),
    ("deepspeed.runtime.pipe.topology", "PipeModelDataParallelTopology"),
    ("deepspeed.runtime.utils", "clip_grad_norm_"),
    ("deepspeed.runtime.engine", "DeepSpeedEngine._load_zero_checkpoint"),
    ("deepspeed.ops", "__compatible_ops__"),
    ("deepspeed.checkpoint.ds_to_universal", "main"),
    ("deepspeed.checkpoint.ds_to_universal", "parse_arguments"),
    ("deepspeed.checkpoint.universal_checkpoint", "SubparamShape"),
    ("deepspeed.checkpoint.constants", "UNIVERSAL_CHECKPOINT_VERSION_VALUE"),
)

# Instance attributes of DeepSpeed's optimizer wrappers read below: (module, class, attribute); the canary checks
# that each class's source still assigns `self.<attribute>` (or defines it as a property).
WRAPPER_ATTRIBUTES = (
    ("deepspeed.runtime.fp16.fused_optimizer", "FP16_Optimizer", "fp16_groups"),
    ("deepspeed.runtime.fp16.fused_optimizer", "FP16_Optimizer", "fp32_groups_flat"),
    ("deepspeed.runtime.fp16.unfused_optimizer", "FP16_UnfusedOptimizer", "fp16_groups"),
    ("deepspeed.runtime.fp16.unfused_optimizer", "FP16_UnfusedOptimizer", "fp32_groups"),
    ("deepspeed.runtime.fp16.unfused_optimizer", "FP16_UnfusedOptimizer", "loss_scale"),
    ("deepspeed.runtime.fp16.fused_optimizer", "FP16_Optimizer", "loss_scale"),
    ("deepspeed.runtime.zero.stage3", "DeepSpeedZeroOptimizer_Stage3", "fp32_partitioned_groups_flat"),
    ("deepspeed.runtime.zero.stage_1_and_2", "DeepSpeedZeroOptimizer", "single_partition_of_fp32_groups"),
    ("deepspeed.runtime.bf16_optimizer", "BF16_Optimizer", "fp32_groups_flat_partition"),
    ("deepspeed.runtime.zero.stage_1_and_2", "DeepSpeedZeroOptimizer", "round_robin_bit16_groups"),
    ("deepspeed.runtime.zero.stage_1_and_2", "DeepSpeedZeroOptimizer", "round_robin_bit16_offsets"),
    ("deepspeed.runtime.zero.stage_1_and_2", "DeepSpeedZeroOptimizer", "round_robin_bit16_meta"),
    ("deepspeed.runtime.zero.stage_1_and_2", "DeepSpeedZeroOptimizer", "partition_size"),
    ("deepspeed.runtime.zero.stage_1_and_2", "DeepSpeedZeroOptimizer", "real_dp_process_group"),
    ("deepspeed.runtime.bf16_optimizer", "BF16_Optimizer", "bf16_groups"),
    ("deepspeed.runtime.bf16_optimizer", "BF16_Optimizer", "bf16_groups_flat"),
    ("deepspeed.runtime.bf16_optimizer", "BF16_Optimizer", "real_dp_process_group"),
)

# ---------------------------------------------------------------------------------------------------------------
# On-disk checkpoint layout (read directly by parallel/reshard.py and training/checkpoint.py, no process group).
# DeepSpeed defines these keys in deepspeed.checkpoint.constants; the canary checks ours equal its.
PARAM_SHAPES = "param_shapes"  # model-states file: per param group {name: shape}, in flat-buffer order
OPTIMIZER_STATE_DICT = "optimizer_state_dict"  # ZeRO optim file: the wrapper's state dict
SINGLE_PARTITION_OF_FP32_GROUPS = "single_partition_of_fp32_groups"  # ZeRO-1/2, bf16: this DP rank's fp32 flat piece
BASE_OPTIMIZER_STATE = "base_optimizer_state"  # the inner torch optimizer's state, per group, same flat shape
PARAM_ALIGNMENT_PADDINGS = "param_alignment_paddings"  # ZeRO-1/2: padding after each parameter in the flat buffer
FP32_FLAT_GROUPS = "fp32_flat_groups"  # ZeRO-3: this DP rank's fp32 pieces of every parameter
PARAM_SLICE_MAPPINGS = "param_slice_mappings"  # bf16 ZeRO-0: where each parameter's piece lies in the flat partition
ON_DISK_KEYS = {"PARAM_SHAPES": PARAM_SHAPES, "OPTIMIZER_STATE_DICT": OPTIMIZER_STATE_DICT,
                "SINGLE_PARTITION_OF_FP32_GROUPS": SINGLE_PARTITION_OF_FP32_GROUPS,
                "BASE_OPTIMIZER_STATE": BASE_OPTIMIZER_STATE, "PARAM_ALIGNMENT_PADDINGS": PARAM_ALIGNMENT_PADDINGS,
                "FP32_FLAT_GROUPS": FP32_FLAT_GROUPS, "PARAM_SLICE_MAPPINGS": PARAM_SLICE_MAPPINGS}
MODULE, OPTIMIZER = "module", "optimizer"  # model-states file: this rank's weights; ZeRO-0: the torch optimizer's state
# ZeRO-0 fp16 wrappers' state_dict() (saved under OPTIMIZER in the model-states file): FP16_Optimizer writes its flat
# fp32 masters per group, FP16_UnfusedOptimizer one master per parameter. Not in deepspeed.checkpoint.constants:
# (module, class, key) for the canary, which reads each class's state_dict source.
FP32_GROUPS_FLAT, FP32_GROUPS = "fp32_groups_flat", "fp32_groups"
SAVED_WRAPPER_KEYS = (("deepspeed.runtime.fp16.fused_optimizer", "FP16_Optimizer", FP32_GROUPS_FLAT),
                      ("deepspeed.runtime.fp16.unfused_optimizer", "FP16_UnfusedOptimizer", FP32_GROUPS))
ENGINE_COUNTERS = ("global_steps", "global_samples", "skipped_steps")  # engine fields saved in model-states files

# File names: `mp` is DeepSpeed's model-parallel rank (pp_rank x TP + tp_rank), `dp` the ZeRO partition's rank.
LAYER_FILE = re.compile(r"layer_(\d+)(?:-model_(\d+))?-model_states\.pt")  # pipeline: layer XX of TP rank YY
MODEL_STATES_PREFIX, MODEL_STATES_SUFFIX = "mp_rank_", "_model_states.pt"


def model_states_file(mp: int) -> str:
    return f"mp_rank_{mp:02d}_model_states.pt"


def zero_optim_file(dp: int, mp: int, bf16: bool = False) -> str:
    """ZeRO-1/2/3 optimizer shard; `bf16`: the BF16_Optimizer's ZeRO-style file written even at ZeRO-0."""
    return f"{'bf16_' if bf16 else ''}zero_pp_rank_{dp}_mp_rank_{mp:02d}_optim_states.pt"


def zero3_model_states_file(dp: int, mp: int) -> str:
    return f"zero_pp_rank_{dp}_mp_rank_{mp:02d}_model_states.pt"


def count_zero_ranks(names: list[str], kind: str) -> int:
    """How many DP ranks wrote ZeRO files for model-parallel rank 0 (`kind`: "optim", "model" or "bf16_optim")."""
    bf16 = kind == "bf16_optim"
    suffix = "_mp_rank_00_model_states.pt" if kind == "model" else "_mp_rank_00_optim_states.pt"
    prefix = "bf16_zero_pp_rank_" if bf16 else "zero_pp_rank_"
    return sum(1 for f in names if f.startswith(prefix) and f.endswith(suffix))


# DeepSpeed's checkpoint names its TP (model-parallel) ranks' files mp_rank_00 .. mp_rank_99 (two digits).
MODEL_STATES_FILE = re.compile(r"mp_rank_\d{2}_model_states\.pt")


def model_states_files(names: list[str]) -> list[str]:
    """The engine's per-model-parallel-rank files (mp_rank_XX_model_states.pt) among `names`, in rank order."""
    return sorted(f for f in names if MODEL_STATES_FILE.fullmatch(f))


def layer_file(layer: int, mp: int) -> str:
    """PipelineModule.ckpt_layer_path: one pipeline layer's weights of model-parallel rank `mp`."""
    return f"layer_{layer:02d}-model_{mp:02d}-model_states.pt"


def zero_file_dp_rank(name: str) -> int:
    """The DP rank in a ZeRO file name (zero_pp_rank_<dp>_mp_rank_XX_..., bf16_ too)."""
    return int(re.search(r"zero_pp_rank_(\d+)_mp_rank_", name).group(1))


def saved_zero0_masters(model_states: dict) -> list[torch.Tensor] | None:
    """The fp32 master weights a ZeRO-0 fp16 run saved in a model-states file, one flat tensor per parameter group
    (the FP16_UnfusedOptimizer's per-parameter masters concatenated); None when the file holds none."""
    opt = model_states.get(OPTIMIZER) or {}
    flats = opt.get(FP32_GROUPS_FLAT)
    if not flats and opt.get(FP32_GROUPS):
        flats = [torch.cat([t.reshape(-1) for t in group]) for group in opt[FP32_GROUPS]]
    return flats or None


def bf16_optimizer_pieces(optim_states: dict) -> Iterator[tuple[str, torch.Tensor]]:
    """(parameter name, fp32 piece) from one DP rank's BF16_Optimizer file: per parameter group the rank's flat
    fp32 partition, and PARAM_SLICE_MAPPINGS saying where each parameter's piece (a DeepSpeed fragment address:
    start, numel) lies in it."""
    o = optim_states[OPTIMIZER_STATE_DICT]
    for g, mapping in enumerate(o[PARAM_SLICE_MAPPINGS]):
        flat = o[SINGLE_PARTITION_OF_FP32_GROUPS][g]
        for name, frag in mapping.items():
            yield name, flat.narrow(0, frag.start, frag.numel)


def is_model_states_file(name: str) -> bool:
    return name.startswith(MODEL_STATES_PREFIX) and name.endswith(MODEL_STATES_SUFFIX)


ZERO_OPTIM_FILE = re.compile(r"(bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt")  # zero_optim_file's names


def zero_optim_files(names: list[str]) -> list[str]:
    """The ZeRO-1/2 (and bf16 ZeRO-0) optimizer shards among `names`, sorted."""
    return sorted(n for n in names if ZERO_OPTIM_FILE.fullmatch(n))


def is_optim_states_file(name: str) -> bool:
    """Any optimizer shard (ZeRO-1/2/3, bf16 ZeRO-0)."""
    return name.endswith("optim_states.pt")


# ---------------------------------------------------------------------------------------------------------------
# Engine and optimizers
def clip_grad_norm_(parameters, max_norm: float, mpu=None) -> torch.Tensor:
    """DeepSpeed's model-parallel-aware gradient clipping (tensor-parallel parameters counted on every TP rank,
    replicated ones once). Its plain fp32 ZeRO-0 path clips but discards the norm, so the trainer calls it itself
    to log the norm (parallel/engine.trainer_clips_gradients)."""
    from deepspeed.runtime.utils import clip_grad_norm_ as ds_clip

    return ds_clip(parameters, max_norm, mpu=mpu)


def fp16_loss_scale(optimizer) -> float | None:
    """The dynamic loss scale of DeepSpeed's fp16 wrappers (`loss_scale` on FP16_Optimizer, FP16_UnfusedOptimizer and
    the ZeRO optimizers; DeepSpeed has no engine-level accessor); None for others."""
    scale = getattr(optimizer, "loss_scale", None)
    return float(scale) if scale is not None else None


def zero0_masters(optimizer) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(model parameter, the inner optimizer's state key, the parameter's fp32 master view) for each parameter of
    DeepSpeed's ZeRO-0 fp16/bf16 wrappers: FP16_UnfusedOptimizer keeps one master per parameter (`fp32_groups`),
    FP16_Optimizer one flat master per group (`fp32_groups_flat`) holding the group's parameters back to back.
    Empty for every other optimizer (plain torch ones step the model parameters; ZeRO/BF16 ones link their own).
    DeepSpeed offers no public accessor for these masters."""
    from deepspeed.runtime.fp16.fused_optimizer import FP16_Optimizer
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer

    out = []
    if isinstance(optimizer, FP16_UnfusedOptimizer):
        for lps, hps in zip(optimizer.fp16_groups, optimizer.fp32_groups):
            out += [(lp, hp, hp) for lp, hp in zip(lps, hps)]
    elif isinstance(optimizer, FP16_Optimizer):
        for lps, flat in zip(optimizer.fp16_groups, optimizer.fp32_groups_flat):
            offset = 0
            for lp in lps:
                out.append((lp, flat, flat.narrow(0, offset, lp.numel()).view_as(lp)))
                offset += lp.numel()
    return out


def is_bf16_zero0_optimizer(optimizer) -> bool:
    """DeepSpeed's BF16_Optimizer (bf16 pipelines at ZeRO-0). It clears the model's gradients in a backward hook
    that fires when backward reaches the pipeline module's output, i.e. after the pipeline's loss function ran, so
    parameters used only inside the loss lose their gradients; and it saves its state ZeRO-style
    (`bf16_zero_pp_rank_*` files) but, with ZeRO off, does not look there on load."""
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer

    return isinstance(optimizer, BF16_Optimizer)


# Where each DeepSpeed optimizer wrapper keeps the fp32 tensors its inner torch optimizer steps (the state keys):
# ZeRO-3, ZeRO-1/2, and the bf16 ZeRO-0 wrapper. A plain torch optimizer steps the model parameters themselves.
_FLAT_FP32 = ("fp32_partitioned_groups_flat", "single_partition_of_fp32_groups", "fp32_groups_flat_partition")


def fp32_state_keys(wrapper) -> list[torch.Tensor] | None:
    """The tensors the wrapper's inner optimizer keys its state by, or None for a plain torch optimizer."""
    return next((list(getattr(wrapper, a)) for a in _FLAT_FP32 if hasattr(wrapper, a)), None)


def flat_partition_layouts(wrapper) -> list[dict] | None:
    """Where each model parameter lies in this rank's flat fp32 partition, per param group, for the wrappers whose
    inner optimizer steps one flat piece of many parameters: ZeRO-1/2 (DeepSpeedZeroOptimizer: the group's
    parameters back to back in `round_robin_bit16_groups` order at `round_robin_bit16_offsets`, alignment padding
    between them) and BF16_Optimizer (bf16 ZeRO-1 and bf16 pipelines: back to back, no padding). The flat buffer
    is cut into equal DP partitions; rank r holds [r * size, (r + 1) * size). None for the other wrappers (their
    inner optimizer sees whole tensors). Per group: {"partition": the flat fp32 tensor, "dp_group",
    "params": the model parameters in flat order, "numel": their sizes, "slices": [(i, lo, hi)] = the part of
    parameter i in this partition, in partition coordinates}."""
    import torch.distributed as dist

    if hasattr(wrapper, "round_robin_bit16_groups") and hasattr(wrapper, "single_partition_of_fp32_groups"):
        groups, pgs = wrapper.round_robin_bit16_groups, wrapper.real_dp_process_group
        offsets, sizes = wrapper.round_robin_bit16_offsets, wrapper.partition_size
        numels = [[m.numel() for m in meta] for meta in wrapper.round_robin_bit16_meta]
        partitions = wrapper.single_partition_of_fp32_groups
    elif hasattr(wrapper, "bf16_groups") and hasattr(wrapper, "fp32_groups_flat_partition"):
        groups, pgs = wrapper.bf16_groups, wrapper.real_dp_process_group
        numels = [[p.numel() for p in g] for g in groups]
        offsets = [[sum(n[:i]) for i in range(len(n))] for n in numels]
        sizes = [flat.numel() // dist.get_world_size(group=pg) for flat, pg in zip(wrapper.bf16_groups_flat, pgs)]
        partitions = wrapper.fp32_groups_flat_partition
    else:
        return None
    layouts = []
    for i, params in enumerate(groups):
        start = dist.get_rank(group=pgs[i]) * int(sizes[i])
        end = start + int(sizes[i])
        slices = [(j, max(off, start) - start, min(off + n, end) - start)
                  for j, (off, n) in enumerate(zip(offsets[i], numels[i])) if max(off, start) < min(off + n, end)]
        layouts.append({"partition": partitions[i], "dp_group": pgs[i], "params": list(params),
                        "numel": list(numels[i]), "slices": slices})
    return layouts


def link_optimizer_state(wrapper) -> None:
    """DeepSpeed links its per-parameter views of the optimizer state lazily, at the first step; after creating
    the state ourselves (to load into it before any step) the link is made here."""
    link = getattr(wrapper, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None:
        link()


def has_fp32_mapping(p: torch.nn.Parameter) -> bool:
    """A parameter whose fp32 master and optimizer state DeepSpeed maps for `deepspeed.utils.safe_set_full_*`
    (ZeRO-3 parameters, and ZeRO-1/2 / BF16 ones through their `_hp_mapping`)."""
    return hasattr(p, "ds_id") or hasattr(p, "_hp_mapping")


def is_zero3_param(p: torch.nn.Parameter) -> bool:
    return hasattr(p, "ds_id")


def local_tensor(p: torch.nn.Parameter) -> torch.Tensor:
    """The tensor this rank holds of a parameter: its ZeRO-3 partition (`ds_tensor`), else the parameter."""
    return getattr(p, "ds_tensor", p)


def zero3_local_range(p: torch.nn.Parameter) -> tuple[torch.Tensor, int, int, torch.Size]:
    """ZeRO-3: (this rank's partition of the flattened parameter, its start in the flat parameter, how many of its
    elements are real, the full parameter's shape); DeepSpeed pads the last partition with zeros."""
    import torch.distributed as dist

    part = p.ds_tensor
    start = dist.get_rank(group=p.ds_process_group) * part.numel()
    return part, start, max(0, min(part.numel(), p.ds_numel - start)), p.ds_shape


def refresh_fp32_masters(optimizer) -> None:
    """Re-derive a wrapper's fp32 master weights from the (just loaded) model weights. DeepSpeed's fp16/bf16
    wrappers keep masters from before a load that skipped the optimizer, and their first step would write those
    back over the loaded weights."""
    refresh = getattr(optimizer, "refresh_fp32_params", None)
    if refresh is not None:
        refresh()


def load_bf16_zero0_optimizer(engine, root: str, tag: str) -> bool:
    """Load the BF16_Optimizer's ZeRO-style optimizer files at ZeRO-0 (DeepSpeed's `load_checkpoint` looks for its
    state in the model-states file there and fails with KeyError: 0). Returns False when the files are missing."""
    return bool(engine._load_zero_checkpoint(root, tag, load_optimizer_states=True))


# ---------------------------------------------------------------------------------------------------------------
# ZeRO-3 construction
@contextlib.contextmanager
def without_zero_init_broadcast() -> Iterator[None]:
    """zero.Init broadcasts every new parameter whole from DP rank 0 before partitioning it, so that all ranks
    partition the same values; the receivers then hold the whole parameter (at PaLM-540B the 18.9 GB embedding).
    Our ZeRO-3 build writes every rank's range itself afterwards, so the broadcast only costs memory: skip it by
    replacing the private `Init._zero_init_param` (convert, broadcast, partition) with convert + partition. Where a
    DeepSpeed version lacks it, nothing is changed and the build is merely bigger
    (tests/distributed/test_sharded_init.py would say so). Process-wide while active: used only around the build."""
    from deepspeed.runtime.zero.partition_parameters import Init

    original = Init.__dict__.get("_zero_init_param")
    if original is None or not hasattr(Init, "_convert_to_deepspeed_param"):
        yield
        return

    def convert_and_partition(self, param):
        self._convert_to_deepspeed_param(param)
        param.partition()

    Init._zero_init_param = convert_and_partition
    try:
        yield
    finally:
        Init._zero_init_param = original


# ---------------------------------------------------------------------------------------------------------------
# Pipeline
def pipe_topology(pp: int, tp: int, dp: int):
    """DeepSpeed's `PipeModelDataParallelTopology` (for `PipelineModule(topology=...)`); not exported publicly."""
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

    return PipeModelDataParallelTopology(num_pp=pp, num_mp=tp, num_dp=dp)


def is_tied_copy(p: torch.nn.Parameter) -> bool:
    """DeepSpeed marks the second copy of a tied pipeline weight (the head on the last stage) `ds_pipe_replicated`;
    a global gradient norm counts it once."""
    return bool(getattr(p, "ds_pipe_replicated", False))


@functools.lru_cache(maxsize=None)
def pipeline_module_base():
    """A `PipelineModule` subclass with two hooks DeepSpeed does not offer:

    - `after_build()`: called right after DeepSpeed builds this stage's layers (its private `_build`) and before it
      moves them to the device or broadcasts tied weights, so a stage can materialise only its own parameters;
    - the tied-weight broadcast (private `_synchronize_tied_weights`, run at build and after loading a checkpoint)
      runs under no_grad: DeepSpeed broadcasts in place on a leaf parameter, and outside no_grad autograd records
      the c10d op and warns at every backward."""
    from deepspeed.pipe import PipelineModule

    class PipelineModuleWithHooks(PipelineModule):
        def _build(self):
            super()._build()
            self.after_build()

        def after_build(self) -> None:
            pass

        def _synchronize_tied_weights(self):
            with torch.no_grad():
                super()._synchronize_tied_weights()

    return PipelineModuleWithHooks


# ---------------------------------------------------------------------------------------------------------------
# Logs
def name_cpu_accelerator() -> None:
    """Without CUDA, DeepSpeed auto-detects its CPU accelerator and warns about it on stdout, once per process
    (every rank of every run, and before `--print-config`'s YAML). Naming the accelerator ourselves through
    DeepSpeed's documented override (DS_ACCELERATOR, inherited by the ranks a launcher starts) makes it an info
    line, below DeepSpeed's default log level. Call before DeepSpeed is imported; a user's own setting wins."""
    import os

    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"


# ---------------------------------------------------------------------------------------------------------------
# Ops
def mark_ops_incompatible(names) -> list[str]:
    """Mark DeepSpeed ops incompatible in its probe table (`deepspeed.ops.__compatible_ops__`), which DeepSpeed
    consults before JIT-building an op (deepspeed.comm.torch.build_shm_op builds its CPU shared-memory op on every
    init_distributed otherwise). Returns the ops switched off; a DeepSpeed without the table changes nothing."""
    import deepspeed.ops

    table = getattr(deepspeed.ops, "__compatible_ops__", None)
    if not isinstance(table, dict):
        return []
    off = [name for name in names if table.get(name)]
    for name in off:
        table[name] = False
    return off


# ---------------------------------------------------------------------------------------------------------------
# DeepSpeed's universal-checkpoint tool (deepspeed/checkpoint/ds_to_universal.py) and the format it writes.
def run_ds_to_universal(input_folder: str, output_folder: str) -> None:
    """DeepSpeed's ds_to_universal in this process, one extract and one merge worker. The tool has no library
    entry point: its `main` takes the namespace of its own `parse_arguments`, which reads sys.argv (restored after).
    Its output goes to a buffer; on failure RuntimeError carries the exception and the tool's last output line."""
    import io
    import sys

    from deepspeed.checkpoint import ds_to_universal as tool

    argv, log = sys.argv, io.StringIO()
    sys.argv = ["ds_to_universal", "--input_folder", input_folder, "--output_folder", output_folder,
                "--num_extract_workers", "1", "--num_merge_workers", "1"]
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            tool.main(tool.parse_arguments())
    except (Exception, SystemExit) as exc:  # the tool exits or raises on inputs it cannot merge
        last = [line for line in log.getvalue().splitlines() if line.strip()][-1:] or [""]
        raise RuntimeError(f"{exc!r} {last[0]}") from None
    finally:
        sys.argv = argv


def universal_subparam_shape(shape: tuple, partition_dim: int = 0):
    """The SubparamShape entry (deepspeed/checkpoint/universal_checkpoint.py) a universal checkpoint's fp32.pt uses
    for a fused parameter of unequal parts (GQA's [q; k; v]): the loader slices each part per TP rank."""
    from deepspeed.checkpoint.universal_checkpoint import SubparamShape

    return SubparamShape(patterns=[], shape=shape, partition_dim=partition_dim)


def universal_checkpoint_version():
    """The format version a universal checkpoint's universal_checkpoint_info carries (checked by the loader)."""
    from deepspeed.checkpoint.constants import UNIVERSAL_CHECKPOINT_VERSION_VALUE

    return UNIVERSAL_CHECKPOINT_VERSION_VALUE
