"""Process launch and the DeepSpeed engine.

Launchers: `deepspeed`, `torchrun` (RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* in the environment), `srun` (SLURM_PROCID,
SLURM_NTASKS, SLURM_LOCALID, master = first host of SLURM_JOB_NODELIST; no pdsh/ssh) and plain `python` (world
size 1 on a free local port). Backend: NCCL with CUDA, gloo otherwise. The DeepSpeed config is generated from the
JobConfig, or a user's JSON is taken as given after checking that its batch/precision keys agree with ours.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
from typing import Any, MutableMapping

import torch
from torch import nn

from ..config.base import ConfigError
from ..config.job import JobConfig
from . import deepspeed_compat as dsc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _first_slurm_host(nodelist: str) -> str:
    """First hostname of a SLURM nodelist ("node[01-04,07],gpu3" -> "node01"), via scontrol when present."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             timeout=10, check=True).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    m = re.match(r"([^\[,]+)(\[([0-9]+))?", nodelist)
    if not m:
        return nodelist
    return m.group(1) + (m.group(3) or "")


def launch_environment(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Fill RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT (in `environ`, default os.environ) from whichever
    launcher started us: torchrun/deepspeed (RANK set), an `srun` step (SLURM_STEP_ID set), or plain python.

    A SLURM batch script itself also has SLURM_PROCID=0 and SLURM_NTASKS=N but is one process, not a step: plain
    `python pretrain_code.py` there runs world size 1 instead of waiting forever for N-1 peers."""
    env = os.environ if environ is None else environ
    step = env.get("SLURM_STEP_ID", env.get("SLURM_STEPID"))
    if "RANK" in env and "WORLD_SIZE" in env:
        env.setdefault("LOCAL_RANK", "0")
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", "29500")
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env and step is not None:
        env["RANK"] = env["SLURM_PROCID"]
        env["WORLD_SIZE"] = env["SLURM_NTASKS"]
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        env.setdefault("MASTER_ADDR", _first_slurm_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1")))
        # Deterministic per job and step so every task agrees without talking first, and two steps of one job
        # (run one after another or side by side) do not share a port: 20000-39999.
        job_id = int(env.get("SLURM_JOB_ID", "0"))
        step_id = int(step) if step.isdigit() else 0
        env.setdefault("MASTER_PORT", str(20000 + (job_id % 1000) * 20 + step_id % 20))
    else:
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(_free_port()))
    return {k: env[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}


# DeepSpeed ops that it would JIT-compile when a job starts, and why none of them is needed here.
UNUSED_JIT_OPS = {
    # deepspeed.comm.torch.TorchBackend builds this on every CPU init_distributed (30-300 s of silent g++ on a cold
    # cache, under a file lock in ~/.cache/torch_extensions that a killed holder leaves behind, hanging every later
    # launch). It serves only DeepSpeed's `inference_all_reduce` (DeepSpeed-Inference's injected layers), which
    # nothing in megatron_code calls; without it that call falls back to torch.distributed.all_reduce anyway.
    "deepspeed_shm_comm": "inference-only shared-memory all-reduce; training collectives go through gloo/NCCL",
}


def keep_deepspeed_from_compiling() -> list[str]:
    """Mark UNUSED_JIT_OPS incompatible in DeepSpeed's probe table (`deepspeed.ops.__compatible_ops__`, which
    `deepspeed.comm.torch.build_shm_op` consults before it JIT-builds the op), so no job start compiles anything or
    takes torch's extension file lock. Returns the ops switched off. Nothing else reads the table."""
    return dsc.mark_ops_incompatible(UNUSED_JIT_OPS)


def init_distributed(backend: str = "auto", timeout_minutes: float | None = None) -> tuple[int, int]:
    """Initialize torch.distributed through DeepSpeed (idempotent). Returns (rank, world_size).

    `timeout_minutes` (--distributed-timeout-minutes): the collectives' timeout of the world group and of every
    group created after it (ours in parallel/groups.py, DeepSpeed's own for pipelines and ZeRO). Workers started by
    a launcher agent die with it (parallel/lifecycle.py)."""
    import datetime

    from .lifecycle import die_with_launcher

    die_with_launcher()
    keep_deepspeed_from_compiling()
    import deepspeed
    import torch.distributed as dist

    launch_environment()
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl" and not torch.cuda.is_available():
        raise ConfigError("--distributed-backend nccl needs CUDA; this machine has none: use gloo")
    if not dist.is_initialized() or not deepspeed.comm.is_initialized():
        # Also when torch.distributed is already up (a test harness, another framework): deepspeed.comm then wraps
        # the existing group; zero.Init needs it before any engine exists.
        kwargs = {"timeout": datetime.timedelta(minutes=timeout_minutes)} if timeout_minutes else {}
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False, **kwargs)
    if timeout_minutes:
        # Groups created later (torch's new_group, which DeepSpeed's pipeline grid and ZeRO call without a timeout)
        # take torch's module default, 30 min for gloo: make it ours. A group that exists already keeps its own.
        from torch.distributed import distributed_c10d
        distributed_c10d.default_pg_timeout = datetime.timedelta(minutes=timeout_minutes)
    if torch.cuda.is_available():
        # Sites that bind one GPU per task show each task a single device: wrap the local rank.
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    return dist.get_rank(), dist.get_world_size()


def trainer_clips_gradients(job: JobConfig) -> bool:
    """DeepSpeed's plain fp32 path (ZeRO-0, no loss scaler) clips but throws the norm away; there the trainer clips
    (same function, same mpu) so it can log the norm. Every other path reports the norm itself."""
    return job.parallel.zero_stage == 0 and job.training.precision == "fp32"


def deepspeed_config(job: JobConfig, grad_accum: int) -> dict[str, Any]:
    """The DeepSpeed JSON for this job: generated, or the user's file checked against the job."""
    t, p = job.training, job.parallel
    ours: dict[str, Any] = {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": 0.0 if trainer_clips_gradients(job) else job.optim.clip_grad,
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
        "zero_optimization": {"stage": p.zero_stage},
        "zero_allow_untested_optimizer": True,
    }
    if p.cpu_offload:
        if p.zero_stage == 0:
            raise ConfigError("--cpu-optimizer (ZeRO-Offload) needs --zero-stage 1, 2 or 3")
        ours["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
        # DeepSpeed insists on its DeepSpeedCPUAdam (a C++ op JIT-built on first use: ~2 CPU-minutes, 9 wall-minutes
        # measured on our loaded 2-core machine) for offloaded state and refuses a client torch optimizer. torch's
        # AdamW stepping the offloaded fp32 partition on the CPU is the same arithmetic (without CUDA every tensor
        # is on the CPU anyway); on GPUs DeepSpeedCPUAdam's vectorized step is faster, not different.
        ours["zero_force_ds_cpu_optimizer"] = False
    if t.precision == "bf16":
        ours["bf16"] = {"enabled": True}
    elif t.precision == "fp16":
        # loss_scale 0 = dynamic (DeepSpeed's convention, and Megatron's when --loss-scale is absent).
        ours["fp16"] = {"enabled": True, "loss_scale": t.loss_scale, "initial_scale_power": t.initial_loss_scale_power,
                        "loss_scale_window": t.loss_scale_window, "hysteresis": t.hysteresis,
                        "min_loss_scale": t.min_loss_scale}
    if not p.deepspeed_config:
        return ours
    try:
        with open(p.deepspeed_config) as f:
            given = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"--deepspeed_config {p.deepspeed_config}: file not found") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--deepspeed_config {p.deepspeed_config}: not valid JSON ({exc})") from None
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        if key in given and given[key] != "auto" and int(given[key]) != ours[key]:
            raise ConfigError(f"--deepspeed_config sets {key}={given[key]} but the command line gives {ours[key]}: "
                              f"make them agree (or set it to \"auto\" in the JSON)")
        given[key] = ours[key]
    for key in ("bf16", "fp16"):
        if key not in given and not (key == "bf16" and "bfloat16" in given):
            if key in ours:  # the JSON says nothing about this precision: ours (merged from it at parse time)
                given[key] = ours[key]
            continue
        enabled = bool(given.get(key, given.get("bfloat16", {}) if key == "bf16" else {}).get("enabled", False))
        if enabled != (t.precision == key):
            raise ConfigError(f"--deepspeed_config has {key}.enabled={enabled} but the precision is "
                              f"{t.precision}: pass --{key} or change the JSON")
    stage = given.get("zero_optimization", {}).get("stage", 0)
    if stage != p.zero_stage and p.zero_stage != 0:
        raise ConfigError(f"--deepspeed_config uses ZeRO stage {stage} but --zero-stage is {p.zero_stage}")
    if stage != p.zero_stage:
        p.zero_stage = stage
        p.validate()
    given["gradient_clipping"] = ours["gradient_clipping"]
    given.setdefault("steps_per_print", ours["steps_per_print"])
    given.setdefault("zero_allow_untested_optimizer", True)
    if "optimizer" in given or "scheduler" in given:
        raise ConfigError("--deepspeed_config defines an optimizer/scheduler; remove them: megatron_code builds "
                          "AdamW and the LR schedule from --lr/--lr-decay-style etc.")
    return given


def check_precision_supported(precision: str) -> None:
    """DeepSpeed refuses a precision its accelerator lacks, deep inside engine setup and after the model is built.
    Its CPU accelerator has fp16 only where oneDNN computes in fp16 (CPUs with AVX512-FP16 or AMX-FP16, such as
    Intel Sapphire Rapids; not, for example, AMD EPYC): say so first, with the fix."""
    if precision != "fp16":
        return
    from deepspeed.accelerator import get_accelerator

    acc = get_accelerator()
    if not acc.is_fp16_supported():
        raise ConfigError(f"--fp16: DeepSpeed's {acc.device_name()} accelerator has no fp16 on this machine "
                          "(on CPU it needs AVX512-FP16 or AMX-FP16); train with --bf16, or in fp32 without "
                          "--fp16 (and set \"fp16\": {\"enabled\": false} in a --deepspeed_config JSON)")


def initialize_engine(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ds_config: dict[str, Any],
                      mpu=None):
    import deepspeed
    client = optimizer
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config, mpu=mpu)
    undo_state_initialization_step(engine.optimizer)
    if hasattr(client, "use_flat_partitions"):  # Adafactor: per-tensor RMS on ZeRO-1/2 / BF16_Optimizer partitions
        layouts = dsc.flat_partition_layouts(engine.optimizer)
        if layouts is not None:
            client.use_flat_partitions(layouts)
    return engine


def undo_state_initialization_step(optimizer) -> bool:
    """DeepSpeed's ZeRO-0 fp16/bf16 wrappers (FP16_Optimizer, FP16_UnfusedOptimizer: fp16, and bf16 without ZeRO
    or pipeline) create the inner optimizer's state with one step() on zero gradients. For Adam that is step 1, so
    the first real update runs with step 2's bias correction (0.74x its size at betas (0.9, 0.95)) and the
    correction stays off by one step; AdamW's decoupled weight decay also shrinks the fp32 master weights once
    before training. Measured on a tiny model: bf16 at ZeRO-0 trained 0.3% behind fp32 by step 3, while bf16 at
    ZeRO-1 (whose optimizer takes no such step) matched fp32 to 4e-5. Undone here: the inner optimizer's state is
    dropped (torch optimizers recreate it at the first real step) and the masters are copied back from the model's
    weights, which they were made from (exact). Returns True when there was something to undo."""
    masters = dsc.zero0_masters(optimizer)
    if not masters:
        return False
    with torch.no_grad():
        for lp, _, view in masters:
            view.copy_(lp)
    optimizer.optimizer.state.clear()
    return True


@contextlib.contextmanager
def _without_default_init():
    """Construct Linear / Embedding modules without torch's default initialisation. zero.Init builds each module
    whole before partitioning it, and the default init (Embedding: normal_, Linear: kaiming_uniform_) would write,
    i.e. make resident, every page of the whole weight; untouched, a fresh weight costs no memory until this rank's
    range is written. Values and RNG are unaffected: every parameter is initialised afterwards from its seed, and
    build_model restores torch's global RNG around the build."""
    saved = {cls: cls.__dict__["reset_parameters"] for cls in (nn.Linear, nn.Embedding)}
    try:
        for cls in saved:
            cls.reset_parameters = lambda self: None
        yield
    finally:
        for cls, fn in saved.items():
            cls.reset_parameters = fn


def build_partitioned_gpt(job: JobConfig, grad_accum: int, dp_group=None) -> torch.nn.Module:
    """ZeRO-3: build the GPT under `deepspeed.zero.Init`, so each module's parameters are split over the DP ranks
    as soon as that module is constructed (without torch's default init and without zero.Init's broadcast, whose
    values would be overwritten), then write each rank's range of every parameter directly: no rank ever holds a
    whole parameter (peak: its share plus one piece of a chunked draw, sharded_init.PIECE_ELEMENTS).

    Seed-identical to the single-process build (DP parity holds): construction runs the same Python in the same
    order (so torch's global RNG is consumed identically), the per-module seeds are `module_seeds` of the whole GPT
    from a generator seeded with training.seed (what `init_weights` uses), and a rank's range [rank * partition,
    rank * partition + n) of the flattened weight is cut from the same normal_ stream (`init_flat_part`). Every
    rank therefore ends with its slice of exactly the weights `GPT(cfg).init_weights(Generator().manual_seed(seed))`
    gives."""
    import deepspeed

    from ..model import GPT
    from ..model.init import module_seeds
    from .sharded_init import init_flat_part

    with deepspeed.zero.Init(config_dict_or_path=deepspeed_config(job, grad_accum), data_parallel_group=dp_group), \
            _without_default_init(), dsc.without_zero_init_broadcast():
        model = GPT(job.model)
    seeds = module_seeds(model, torch.Generator().manual_seed(job.training.seed))
    for name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            # (partition,) this rank's range of the flattened parameter, zero-padded at the end
            part, start, n, shape = dsc.zero3_local_range(p)
            if not init_flat_part(name, module, job.model, seeds.get(name), pname, shape, start, part[:n]):
                raise ValueError(f"'{name}.{pname}' has no init rule: cannot initialise it under ZeRO-3")
    return model
