"""Checkpoints: DeepSpeed checkpoints plus our client state, written atomically.

Layout of a save directory:

    SAVE/latest                      text: the newest complete tag (moved last, with os.replace)
    SAVE/iter_0000100/               DeepSpeed's files (mp_rank_XX_model_states.pt, zero_* optimizer shards, ...)
    SAVE/iter_0000100/config.yaml    the resolved JobConfig
    SAVE/iter_0000100/meta.json      iteration, consumed samples, tokenizer fingerprint, layout
    SAVE/iter_0000100/tokenizer/     the tokenizer files (for generation and HF export)

A save first writes everything into SAVE/.staging/<tag>, then renames the directory into place and only then
rewrites `latest`: a crash at any point leaves the previous checkpoint and `latest` intact. meta.json lists every
file with its size and SHA-256; which tag a load trusts (and what is refused) is decided in ckpt_store.py.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import time
from typing import Any, Callable

import numpy as np
import torch

from ..config.job import JobConfig
from ..parallel import deepspeed_compat as dsc
from ..parallel.reshard import FULL_FILE, check_same_layout, consolidate_layout, load_full_checkpoint
from ..utils import atomic
from . import ckpt_store as store
from .ckpt_store import STAGING, CheckpointError, read_latest  # noqa: F401 - re-exported

# Fields that may change between runs without changing the saved tensors' meaning.
MUTABLE_MODEL_FIELDS = {"attention_dropout", "hidden_dropout", "embedding_dropout", "init_std", "scaled_init"}


def mutable_model_fields(saved_model, model) -> set[str]:
    """MUTABLE_MODEL_FIELDS, plus max_position_embeddings when neither model learns position embeddings: with RoPE
    (or none) it sizes no tensor, so a run may raise it to extend the context."""
    if saved_model.position_embedding != "learned" and model.position_embedding != "learned":
        return MUTABLE_MODEL_FIELDS | {"max_position_embeddings"}
    return MUTABLE_MODEL_FIELDS


def tag_for(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def resolve_checkpoint(ckpt_dir: str, tag: str | None = None, full: bool = False, require_latest: bool = False,
                       warn: Callable[[str], None] | None = None) -> tuple[str, str]:
    """(directory holding `latest`, tag). Accepts SAVE or SAVE/iter_XXXXXXX. For SAVE the tag is `latest` when it
    is intact, else the previous intact one (store.select_tag; each fallback is reported through `warn`, default
    stderr); an explicitly named tag must itself be intact. full=True also checks every file's SHA-256."""
    if os.path.isfile(ckpt_dir):
        raise CheckpointError(f"{ckpt_dir} is a file, not a checkpoint directory: pass the directory given to --save "
                              f"(or SAVE/iter_XXXXXXX)")
    if not os.path.isdir(ckpt_dir):
        raise CheckpointError(f"checkpoint directory {ckpt_dir} does not exist: check --load")
    if tag is None and store.is_ours(ckpt_dir):
        ckpt_dir, tag = os.path.dirname(os.path.abspath(ckpt_dir)), os.path.basename(os.path.abspath(ckpt_dir))
    if tag is not None:
        bad = store.problems(os.path.join(ckpt_dir, tag), full=full)
        if bad:
            raise CheckpointError(f"checkpoint {os.path.join(ckpt_dir, tag)} is damaged: {'; '.join(bad[:3])}. Load "
                                  f"an earlier one (pass the save directory to fall back automatically)")
        return ckpt_dir, tag
    tag, warnings = store.select_tag(ckpt_dir, require_latest=require_latest, full=full)
    for w in warnings:
        (warn or (lambda m: print(m, file=sys.stderr, flush=True)))(w)
    return ckpt_dir, tag


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def nothing_to_load(load_dir: str, save_dir: str | None) -> bool:
    """True when --load names the --save directory of a run that has not saved yet (Megatron launch scripts pass
    --load X --save X from the first launch on). A --load elsewhere that holds nothing stays an error, and so does
    one holding another trainer's checkpoint; `iter_*` directories without `latest` are resumed, not trained over."""
    if not save_dir or os.path.abspath(load_dir) != os.path.abspath(save_dir):
        return False
    if not os.path.isdir(load_dir):
        return True
    store.refuse_foreign(load_dir, "--load")
    return read_latest(load_dir) is None and not store.list_tags(load_dir)


def check_fresh_save_dir(save_dir: str | None, load_dir: str | None) -> None:
    """Refuse to start a new run on top of another run's checkpoints (they would be mixed and overwritten), and
    another trainer's checkpoint in --load or --save (before anything is built)."""
    if load_dir and os.path.isdir(load_dir):
        store.refuse_foreign(load_dir, "--load")
    if not save_dir or load_dir or not os.path.isdir(save_dir):
        return
    store.refuse_foreign(save_dir, "--save")
    latest = read_latest(save_dir) or (store.list_tags(save_dir) or [None])[-1]
    if latest is not None:
        raise CheckpointError(f"--save {save_dir} already holds checkpoints (latest: {latest}). To continue that "
                              f"run pass --load {save_dir}; to start a new one choose an empty --save directory")


def lock_save_dir(save_dir: str, rank: int = 0) -> store.SaveDirLock | None:
    """Collective when distributed: rank 0 takes SAVE/.lock (held until the process ends) and removes leftovers of
    interrupted saves; every rank raises the same CheckpointError when another job holds it."""
    import torch.distributed as dist
    lock, error = None, None
    if rank == 0:
        try:
            lock = store.SaveDirLock(save_dir)
            for path in store.clean_leftovers(save_dir):
                print(f"note: removed {path} (left by an interrupted save)", file=sys.stderr)
        except CheckpointError as exc:
            error = str(exc)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error:
        raise CheckpointError(error)
    return lock


def _barrier() -> None:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save_checkpoint(engine, job: JobConfig, save_dir: str, iteration: int, client_state: dict[str, Any],
                    tokenizer=None, is_rank0: bool = True, keep: int = 0,
                    publish_if: Callable[[str], str | None] | None = None) -> str | None:
    """Collective: every rank calls it. Returns the final checkpoint directory. With training.save_optim False the
    optimizer state is left out (smaller checkpoints; resuming then needs --no-load-optim).

    publish_if(staged_dir), when given, is called on every rank after the engine has written the staged files and
    before anything is published (it may run collectives); a string it returns is the reason to refuse: the staged
    files are deleted, `latest` and the existing checkpoints stay as they were, and None is returned. A full disk
    (ENOSPC/EDQUOT) raises a CheckpointError naming the directory and the bytes needed, after removing the staged
    files."""
    tag = tag_for(iteration)
    staging_root = os.path.join(save_dir, STAGING)
    staged = os.path.join(staging_root, tag)
    try:
        if is_rank0:
            os.makedirs(save_dir, exist_ok=True)
            shutil.rmtree(staged, ignore_errors=True)  # leftovers of a crashed save of the same tag
            os.makedirs(staging_root, exist_ok=True)
        _barrier()
        engine.save_checkpoint(staging_root, tag=tag, client_state=client_state, save_latest=False)
        _barrier()
        refusal = publish_if(staged) if publish_if is not None else None
        final = os.path.join(save_dir, tag)
        if refusal is not None:
            if is_rank0:
                shutil.rmtree(staging_root, ignore_errors=True)
                print(f"checkpoint {tag} not published: {refusal} ('latest' stays {read_latest(save_dir)})",
                      file=sys.stderr, flush=True)
            _barrier()
            return None
        if is_rank0:
            _publish(job, save_dir, staged, final, tag, iteration, client_state, tokenizer, keep)
    except OSError as exc:
        if not store.is_disk_full(exc):
            raise
        error = store.no_space_error(save_dir, staged, exc)
        shutil.rmtree(staging_root, ignore_errors=True)
        raise error from None
    _barrier()
    return final


def _publish(job: JobConfig, save_dir: str, staged: str, final: str, tag: str, iteration: int,
             client_state: dict[str, Any], tokenizer, keep: int) -> None:
    """Rank 0: complete the staged tag (config, tokenizer, meta.json with every file's checksum), move it into
    place, then point `latest` at it."""
    job.save(os.path.join(staged, "config.yaml"))
    meta = {"iteration": iteration, "consumed_samples": client_state.get("consumed_samples"),
            "tokenizer_fingerprint": client_state.get("tokenizer_fingerprint"),
            "layout": client_state.get("layout"), "has_optimizer": job.training.save_optim,
            "time": time.time()}
    if not job.training.save_optim:
        strip_optimizer_state(staged)
    if tokenizer is not None:
        tokenizer.save(os.path.join(staged, "tokenizer"))
    store.write_meta(staged, meta)  # last: lists (and checksums) every file written above
    if os.path.exists(final):
        # Never delete a user's checkpoint silently: keep the old one beside the new one.
        os.rename(final, f"{final}.replaced-{int(time.time())}")
    atomic.publish_tag(save_dir, staged, tag)
    # Megatron-LM's tracker file (its loaders and scripts read it) and DeepSpeed's recovery script, which
    # DeepSpeed copies beside the tag directories of a ZeRO save (here: into the staging root).
    atomic.write_text(os.path.join(save_dir, "latest_checkpointed_iteration.txt"), str(iteration))
    staging_root = os.path.dirname(staged)
    if os.path.exists(os.path.join(staging_root, "zero_to_fp32.py")):
        os.replace(os.path.join(staging_root, "zero_to_fp32.py"), os.path.join(save_dir, "zero_to_fp32.py"))
    shutil.rmtree(staging_root, ignore_errors=True)
    if keep > 0:
        store.prune(save_dir, keep)


def _prune(save_dir: str, keep: int) -> list[str]:
    return store.prune(save_dir, keep)


def load_job_config(ckpt_dir: str, tag: str | None = None) -> JobConfig:
    root, tag = resolve_checkpoint(ckpt_dir, tag)
    path = os.path.join(root, tag, "config.yaml")
    if not os.path.exists(path):
        raise CheckpointError(f"{os.path.join(root, tag)} has no config.yaml: not a megatron_code checkpoint")
    return JobConfig.load(path)


def check_compatible(saved: JobConfig, job: JobConfig) -> None:
    """Raise naming every architecture field that differs between a checkpoint and the current job."""
    a, b = saved.model.to_dict(), job.model.to_dict()
    mutable = mutable_model_fields(saved.model, job.model)
    diffs = [f"{k}: checkpoint {a[k]!r} vs now {b.get(k)!r}" for k in a if k not in mutable and a[k] != b.get(k)]
    if diffs:
        raise CheckpointError("the checkpoint was trained with a different architecture; resume with the same model "
                              "flags (or --preset) as the saved run. Differences: " + "; ".join(diffs))


def load_checkpoint(engine, job: JobConfig, load_dir: str, tokenizer_fingerprint: str | None) -> dict[str, Any]:
    """Collective. Loads weights (and, unless told otherwise or absent, optimizer state) into the engine; returns
    the client state. training.finetune loads the weights only; training.load_optim False skips the optimizer."""
    root, tag = _choose_on_rank0(load_dir, job.training.require_latest)
    saved = load_job_config(root, tag)
    check_compatible(saved, job)
    meta = store.read_meta(os.path.join(root, tag))
    saved_fp = meta.get("tokenizer_fingerprint")
    if saved_fp and tokenizer_fingerprint and saved_fp != tokenizer_fingerprint:
        raise CheckpointError(f"the checkpoint in {root}/{tag} was trained with a different tokenizer "
                              f"(fingerprint {saved_fp[:12]} vs {tokenizer_fingerprint[:12]}): use the same "
                              f"--tokenizer-model/--vocab-file as the saved run")
    t = job.training
    with_optim = t.load_optim and not t.finetune
    if with_optim and not meta.get("has_optimizer", True):
        raise CheckpointError(f"{root}/{tag} was saved without optimizer state (--no-save-optim): pass "
                              f"--no-load-optim to start the optimizer fresh, or --finetune")
    full = os.path.join(root, tag, FULL_FILE)
    if os.path.exists(full):  # written by tools/reshard_checkpoint.py: loads at any layout
        return load_full_checkpoint(engine, full, job.model, job.parallel.tensor_parallel, with_optim)
    check_same_layout(meta.get("layout"), current_layout(engine, job), f"{root}/{tag}", module_only=t.finetune)
    # DeepSpeed's BF16_Optimizer (bf16 pipelines at ZeRO-0) saves its state ZeRO-style (bf16_zero_pp_rank_* files)
    # but, with ZeRO off, looks for it in the model-states file on load and fails (KeyError: 0): load it the ZeRO way.
    zero_style = with_optim and _bf16_optimizer_without_zero(engine)
    path, client_state = engine.load_checkpoint(root, tag=tag, load_optimizer_states=with_optim and not zero_style,
                                                load_lr_scheduler_states=False, load_module_only=t.finetune)
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load {root}/{tag} (files missing for this layout?)")
    if zero_style and not dsc.load_bf16_zero0_optimizer(engine, root, tag):
        raise CheckpointError(f"{root}/{tag} has no bf16_zero_pp_rank_* optimizer files for this layout: pass "
                              f"--no-load-optim to start the optimizer fresh")
    if not with_optim:
        # Without optimizer state DeepSpeed's fp16/bf16 wrappers at ZeRO-0 keep their fp32 master weights from
        # before the load, and the first step would write those back over the loaded weights (measured: a bf16
        # --no-load-optim resume jumped back to near the initial loss). Re-derive them from the loaded weights.
        dsc.refresh_fp32_masters(engine.optimizer)
    return client_state or {}


def _choose_on_rank0(load_dir: str, require_latest: bool) -> tuple[str, str]:
    """Collective: rank 0 picks the tag (verifying every file's checksum once, not once per rank) and tells the
    others, so every rank loads the same tag or raises the same error."""
    import torch.distributed as dist
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    box: list = [None, None]
    if not distributed or dist.get_rank() == 0:
        try:
            box = [resolve_checkpoint(load_dir, full=True, require_latest=require_latest), None]
        except CheckpointError as exc:
            box = [None, str(exc)]
    if distributed:
        dist.broadcast_object_list(box, src=0)
    if box[1] is not None:
        raise CheckpointError(box[1])
    return box[0]


def _bf16_optimizer_without_zero(engine) -> bool:
    return dsc.is_bf16_zero0_optimizer(engine.optimizer) and not engine.zero_optimization()


def current_layout(engine, job: JobConfig) -> dict[str, int]:
    p = job.parallel
    return {"tp": p.tensor_parallel, "pp": p.pipeline_parallel, "dp": int(getattr(engine, "dp_world_size", 1)),
            "zero": p.zero_stage}


def optimizer_param_names(job: JobConfig) -> list[str]:
    """Parameter names in the order build_optimizer hands them to the optimizer (ZeRO-0 state is keyed by it)."""
    from ..model import GPT
    from .optimizer import param_groups
    with torch.device("meta"):
        model = GPT(job.model)
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in param_groups(model, job.optim.weight_decay) for p in g["params"]]


def strip_optimizer_state(tag_dir: str) -> None:
    """Remove optimizer state from a staged checkpoint (--no-save-optim): ZeRO shards are deleted, the ZeRO-0
    optimizer entry of the model-states files is dropped."""
    for name in os.listdir(tag_dir):
        path = os.path.join(tag_dir, name)
        if dsc.is_optim_states_file(name):
            os.remove(path)
        elif dsc.is_model_states_file(name):
            state = torch.load(path, map_location="cpu", weights_only=False)
            if state.get(dsc.OPTIMIZER) is not None:
                state[dsc.OPTIMIZER] = None
                torch.save(state, path)


def load_consolidated(ckpt_dir: str, tag: str | None = None) -> tuple[JobConfig, dict[str, torch.Tensor], str | None]:
    """(job config, full single-device GPT state dict, tokenizer dir or None) from a checkpoint of any supported
    layout. Reads files directly; no process group needed. Every file's checksum is verified first."""
    root, tag = resolve_checkpoint(ckpt_dir, tag, full=True)
    job = load_job_config(root, tag)
    d = os.path.join(root, tag)
    p = job.parallel
    if p.tensor_parallel > 1 or p.pipeline_parallel > 1 or os.path.exists(os.path.join(d, FULL_FILE)):
        state = consolidate_layout(d, job)
    elif p.zero_stage == 3:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        state = get_fp32_state_dict_from_zero_checkpoint(root, tag=tag)
    else:
        files = [f for f in os.listdir(d) if dsc.is_model_states_file(f)]
        if not files:
            raise CheckpointError(f"{d} has no mp_rank_*_model_states.pt: incomplete checkpoint")
        state = torch.load(os.path.join(d, sorted(files)[0]), map_location="cpu", weights_only=False)[dsc.MODULE]
    state = {k.removeprefix("module."): v.float() if v.is_floating_point() else v for k, v in state.items()}
    tok = os.path.join(d, "tokenizer")
    return job, state, (tok if os.path.isdir(tok) else None)
