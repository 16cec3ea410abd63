"""The training loop, readable top to bottom.

pretrain(job):  distributed init -> process groups -> tokenizer -> model (init, then parallel plan) -> DeepSpeed
engine -> resume -> data from consumed_samples -> loop {lr, micro-batches, step, log, eval, save} -> final save.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from ..config.base import ConfigError
from ..config.deepspeed_json import merge_deepspeed_json
from ..config.job import JobConfig
from ..model import GPT, flops_per_token
from ..model.gpt import head_logits, head_loss
from ..parallel.engine import (build_partitioned_gpt, check_precision_supported, deepspeed_config, init_distributed,
                               initialize_engine, trainer_clips_gradients)
from ..parallel.activation_checkpoint import apply_activation_checkpointing
from ..parallel.deepspeed_compat import clip_grad_norm_, fp16_loss_scale
from ..parallel.groups import ParallelGroups
from ..parallel.random import tp_rng_tracker
from ..parallel.lifecycle import watched
from ..parallel.universal import load_universal, universal_info
from ..parallel.pipeline import (PipelineBatches, StepClipper, build_pipeline, loss_may_produce_gradients,
                                 pipeline_ds_config)
from . import checkpoint as ckpt
from .data import build_job_data, make_loader
from .evaluation import evaluate
from . import recovery
from .guards import StepGuard, StopSignal
from .losses import masked_mean_weights, read_step_for_per_token_loss
from .objective import FUSED, Collate, build_objective, choose_loss_path
from .reported_loss import ReportedLoss
from .formulas import apply_study_formulas
from .lr_schedule import lr_at
from .metrics import MetricsSink, Throughput, WandbWriter, megatron_log_line, memory_gb, peak_flops
from .optimizer import build_optimizer


def log(msg: str, rank: int) -> None:
    """Print on global rank 0 only (every rank passes its rank)."""
    if rank == 0:
        tqdm.write(msg, file=sys.stdout)
        sys.stdout.flush()


def resolve_tokenizer(job: JobConfig):
    """Build the tokenizer named by the job (None if none) and settle model.vocab_size against it."""
    d = job.data
    tok = None
    if d.tokenizer_type:
        from ..data.tokenizer import build_tokenizer
        tok = build_tokenizer(d.tokenizer_type, d.tokenizer_model, d.vocab_file, d.merge_file,
                              vocab_size=job.model.vocab_size, tiktoken_pattern=d.tiktoken_pattern,
                              tiktoken_num_special_tokens=d.tiktoken_num_special_tokens)
        if job.model.vocab_size is None:
            job.model.vocab_size = tok.vocab_size
        elif tok.vocab_size > job.model.vocab_size:
            raise ConfigError(f"the tokenizer has {tok.vocab_size} tokens but model.vocab_size is "
                              f"{job.model.vocab_size}: raise --model.vocab_size or use a smaller tokenizer")
    if job.model.vocab_size is None:
        raise ConfigError("model.vocab_size is unknown: pass a tokenizer (--tokenizer-type/--tokenizer-model) "
                          "or --model.vocab_size N")
    return tok


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(job: JobConfig, groups: ParallelGroups, grad_accum: int = 1, tp_rng=None) -> torch.nn.Module:
    """The GPT for this rank, initialized from the job seed: every layout holds its part of the same weights.

    TP = PP = 1: the whole model (ZeRO-3: partitioned over DP as it is built). TP > 1 or PP > 1: the whole model
    exists only on the meta device; with PP = 1 this rank's TP shards are created and initialized here, with
    PP > 1 the meta GPT is returned and `build_pipeline` creates only this rank's stage (from the job seed).
    Building never advances torch's global RNG (so what follows draws the same in every layout). `tp_rng`: the
    TP dropout stream the caller keeps (parallel/random.tp_rng_tracker)."""
    # only this rank's device (forking every visible GPU's RNG would open a CUDA context on each)
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        if job.parallel.zero_stage == 3 and groups.tp_size == 1 and groups.pp_size == 1:
            return build_partitioned_gpt(job, grad_accum, groups.dp_group)  # never whole on one rank (zero.Init)
        if groups.tp_size == 1 and groups.pp_size == 1:
            model = GPT(job.model)
            model.init_weights(torch.Generator().manual_seed(job.training.seed))
        else:
            model = _build_sharded_gpt(job, groups, tp_rng)
    if groups.pp_size == 1 and job.parallel.activation_checkpoint_interval:
        apply_activation_checkpointing(model, job.parallel.activation_checkpoint_interval, tp_rng)
    return model


def _build_sharded_gpt(job: JobConfig, groups: ParallelGroups, tp_rng=None) -> torch.nn.Module:
    """Meta GPT -> TP plan on meta -> init seeds of the whole GPT (one per module, layout-free); then this rank's
    TP shards are materialised (PP = 1) or build_pipeline does it for this rank's stage (PP > 1). Peak extra memory:
    one full weight."""
    from ..parallel.sharded_init import materialize_from_seed

    with torch.device("meta"):
        model = GPT(job.model)
    if groups.tp_size > 1:
        from ..parallel.plans import plan_for
        from ..parallel.tensor_parallel import apply_tensor_parallel
        apply_tensor_parallel(model, plan_for(job.model, groups.tp_size), groups,
                              sequence_parallel=job.parallel.sequence_parallel, rng_tracker=tp_rng)
    if groups.pp_size == 1:  # with PP, build_pipeline materialises this rank's stage from the job seed
        materialize_from_seed(model, job.model, job.training.seed)
    return model


class Trainer:
    def __init__(self, job: JobConfig):
        self.job = job
        t = job.training
        # The DeepSpeed JSON, if any, was merged by parse_args; a job built in code is checked against it here, before
        # anything is built (no-op when it agrees).
        merge_deepspeed_json(job, None, [])
        precision_note = None
        if t.precision == "fp16" and t.fp16_fallback_bf16:
            try:
                check_precision_supported("fp16")
            except ConfigError:
                t.precision = "bf16"
                precision_note = ("note: the preset trained in fp16, which this machine's accelerator lacks: running "
                                  "in bf16 (--training.fp16_fallback_bf16 false refuses instead)")
        check_precision_supported(t.precision)  # before any model is built
        if t.cpu_threads:
            torch.set_num_threads(t.cpu_threads)
        self.rank, self.world = init_distributed(job.parallel.backend, job.parallel.distributed_timeout_minutes)
        self.groups = ParallelGroups.build(job.parallel.tensor_parallel, job.parallel.pipeline_parallel)
        if precision_note:
            log(precision_note, self.rank)
        self.grad_accum = job.resolve_batch(self.groups.dp_size)  # of the final global batch (and evaluation)
        self.schedule = job.batch_schedule()
        for note in apply_study_formulas(job):  # --lr auto etc.: needs the batch plan above
            log(note, self.rank)
        self.step_batch = t.global_batch_size  # the batch DeepSpeed is configured for; see _set_step_batch
        # other trainers' checkpoints, another run's --save: refused
        ckpt.check_fresh_save_dir(t.save, None if t.universal_checkpoint else t.load)
        self.save_lock = ckpt.lock_save_dir(t.save, self.rank) if t.save else None  # one job per --save
        seed_everything(t.seed)
        self.tokenizer = resolve_tokenizer(job)
        self.tok_fp = self.tokenizer.fingerprint() if self.tokenizer is not None else None
        job.validate()
        self.objective = build_objective(job, self.tokenizer)
        self.tp_rng = tp_rng_tracker(self.groups.tp_rank) if self.groups.tp_size > 1 else None  # TP dropout
        model = build_model(job, self.groups, self.grad_accum, self.tp_rng)
        self.mpu = self.groups.mpu if self.world > 1 else None
        self.pipelined = self.groups.pp_size > 1
        if self.pipelined:
            model, self.mpu = self._pipeline_module(model), None  # DeepSpeed uses the pipeline grid as mpu
        optimizer = build_optimizer(model, job.optim,
                                    tp_group=self.groups.tp_group if self.groups.tp_size > 1 else None)
        self.own_clip = trainer_clips_gradients(job)
        if self.pipelined and self.own_clip:
            self.step_clipper = StepClipper(optimizer, model, job.optim.clip_grad or float("inf"), self.groups)
        ds_config = deepspeed_config(job, self.grad_accum)
        job._check_adafactor()  # a --deepspeed_config JSON may have set the ZeRO stage
        if self.pipelined:
            ds_config = pipeline_ds_config(ds_config, job.parallel.sequence_parallel)
        self.engine = initialize_engine(model, optimizer, ds_config, mpu=self.mpu)
        # After the engine exists: DeepSpeed's ZeRO-0 fp16/bf16 wrappers take one state-creating step at build time
        # (undone by initialize_engine), which must not count as a training step.
        self.guard = StepGuard(optimizer, spike_factor=t.spiky_loss_factor if t.check_for_spiky_loss else 0.0,
                               device=self.engine.device, world=self.world)
        self.guard.outer = self.engine.optimizer if self.engine.optimizer is not optimizer else None
        self.skipped_steps = self.nan_steps = self.nan_at_window = self.bad_streak = self.rollbacks = 0
        self.bad_batches: list[tuple[int, int]] = []  # [first sample, end) of the batches of skipped steps
        self.token_scale: float | None = None  # per-token loss factor of the current step (_per_token_batches)
        # Megatron's `lm loss` (training/reported_loss.py): Megatron-LM's token mean, or Megatron-DeepSpeed's
        self.report = ReportedLoss(self.engine.device, token_mean=t.tensorboard_style == "megatron-lm")
        self.lm_loss = self.lm_valid = float("nan")  # its last training and validation values
        self.skip_samples: set[int] = set()  # first sample of each global batch never to train on again
        self.loss_path = self._choose_loss_path()
        self.grad_norm = float("nan")
        self.phase = None  # {"index", "name", "of"} in a multi-phase run (training/phases.py), saved with checkpoints
        self.iteration, self.consumed = 0, 0
        self.resume_rng = self.resume_tp_rng = None
        if t.load and ckpt.nothing_to_load(t.load, t.save):
            log(f"note: --load {t.load} holds no checkpoint yet and equals --save: starting from scratch "
                f"(the Megatron first-launch convention)", self.rank)
            t.load = None
        if t.load:
            state = (load_universal(self.engine, job, t.load, ckpt.check_compatible) if t.universal_checkpoint else
                     ckpt.load_checkpoint(self.engine, job, t.load, self.tok_fp))
            if t.finetune:
                log(f"fine-tuning from the weights in {t.load} (iteration, data position and optimizer start "
                    f"fresh)", self.rank)
            elif t.reset_progress:
                log(f"continuing from the weights and optimizer state in {t.load} (iteration and data position "
                    f"start fresh)", self.rank)
            else:
                self.iteration = int(state["iteration"])
                self.consumed = int(state["consumed_samples"])
                self.skip_samples = set(state.get("skip_samples") or ())  # batches a rollback rejected
                if t.load_rng:
                    self.resume_rng = state.get("rng")  # restored right before the loop (imported: none)
                    self.resume_tp_rng = state.get("tp_rng")
                log(f"resumed from {t.load} at iteration {self.iteration} ({self.consumed} samples consumed)",
                    self.rank)
        eod = self.tokenizer.eod if self.tokenizer is not None else None
        self.data = build_job_data(job, eod, is_builder=self.rank == 0,
                                   barrier=dist.barrier if self.world > 1 else None,
                                   extra_batches=recovery.extra_batches(self), tokenizer_fingerprint=self.tok_fp)
        self.data.train = self.objective.wrap_train(self.data.train)
        for note in self.data.notes:
            log(f"note: {note}", self.rank)
        self.tp_group = self.groups.tp_group if self.groups.tp_size > 1 else None
        fpt = flops_per_token(job.model, job.data.seq_length)
        # MFU is printed and recorded by global rank 0 only (log(), the metrics sink), so only it measures the peak
        # (the CPU matmul probe is ~0.2 s of CPU per rank).
        peak, source = peak_flops(t.precision, t.peak_tflops) if self.rank == 0 else (0.0, "not measured off rank 0")
        self.throughput = Throughput(fpt, peak, self.world)
        wandb = WandbWriter(t, job.to_dict()) if t.wandb_project and self.rank == 0 else None
        self.sink = MetricsSink(os.path.join(t.save, "metrics.jsonl") if t.save else None, t.tensorboard_dir,
                                enabled=self.rank == 0, style=t.tensorboard_style, wandb=wandb)
        o = job.optim  # --decoupled-lr: the embedding/output group's schedule (same shape, its own peak and floor)
        self.decoupled = None if o.decoupled_lr is None else dataclasses.replace(
            o, lr=o.decoupled_lr, min_lr=o.min_lr if o.decoupled_min_lr is None else o.decoupled_min_lr,
            lr_warmup_init=min(o.lr_warmup_init, o.decoupled_lr))
        self.timers: dict[str, float] = {}  # Megatron's timer names -> seconds in this logging window
        self.skipped_at_window = self.skipped_steps
        n_params = sum(getattr(p, "ds_numel", p.numel()) for p in self.engine.module.parameters())  # ZeRO-3: full
        log(f"model: {n_params:,} parameters on this rank | world {self.world} = TP {self.groups.tp_size} x "
            f"PP {self.groups.pp_size} x DP {self.groups.dp_size} | global batch {self.schedule.describe()} "
            f"(micro {t.micro_batch_size} x accumulation {self.grad_accum}) | {t.precision} | "
            f"ZeRO {job.parallel.zero_stage} | peak {peak / 1e12:.2f} TFLOP/s ({source})", self.rank)

    # ------------------------------------------------------------------ one step
    def _loss(self, batch: dict, train: bool = True):
        # Batches are built on the CPU (DataLoader workers); the engine's device is the accelerator (GPU) or CPU.
        batch = {k: v.to(self.engine.device, non_blocking=True) if torch.is_tensor(v) else v
                 for k, v in batch.items()}
        z, scale = (self.job.training.z_loss, self.token_scale) if train else (0.0, None)
        if self.loss_path.kind(train) == FUSED:
            out = self.engine(batch["input_ids"], batch["position_ids"], mask=batch.get("attention_mask"),
                              labels=batch["labels"], loss_weights=masked_mean_weights(batch["loss_mask"], scale),
                              **({"z_loss": z} if z else {}))
            out = (out[0], {"z_loss": float(out[1])}) if z else (out, {})
        else:
            logits = self.engine(batch["input_ids"], batch["position_ids"], mask=batch.get("attention_mask"))
            out = self.objective.loss(logits, batch, self.tp_group, train, token_scale=scale)
        return self._reported(out, batch, train, scale)

    def _reported(self, out: tuple, batch: dict, train: bool, scale: float | None) -> tuple:
        """`out` (loss, parts) of one micro batch, also added to Megatron's reported loss."""
        self.report.add(out[0], batch["loss_mask"], scale, out[1].get("z_loss", 0.0),
                        self.objective.next_token_loss(train))
        return out

    def _per_token_batches(self, batches, accum: int):
        """--calculate-per-token-loss: this step's micro batches read ahead and `token_scale` set (losses.py)."""
        if not self.job.training.calculate_per_token_loss:
            return batches
        micro, self.token_scale = read_step_for_per_token_loss(batches, accum, self.groups.dp_group,
                                                               self.groups.dp_size, self.engine.device)
        return iter(micro)

    def train_step(self, batches) -> float:
        """One optimizer step over `grad_accum` micro batches. Returns the mean of the micro-batch losses (averaged
        over DP); `lm_loss` is then Megatron's (the global batch's token mean, training/reported_loss.py)."""
        self.report.reset()
        if self.pipelined:
            return self._train_step_pipeline(batches)
        total = 0.0
        self.loss_parts = {}
        self.guard.begin_step()
        accum = self.step_accum
        batches = self._per_token_batches(batches, accum)
        for micro in range(accum):
            t0 = time.perf_counter()
            batch = next(batches)
            t1 = time.perf_counter()
            # Stated, not left to DeepSpeed's count of micro steps modulo the accumulation, which goes out of step
            # once a batch schedule changes the accumulation.
            self.engine.set_gradient_accumulation_boundary(micro == accum - 1)
            loss, parts = self._loss(batch)
            self.guard.record_loss(loss)
            for k, v in parts.items():
                self.loss_parts[k] = self.loss_parts.get(k, 0.0) + v / accum
            self.engine.backward(loss)
            if micro == accum - 1 and self.own_clip:
                self.grad_norm = float(clip_grad_norm_(self.engine.module.parameters(),
                                                       self.job.optim.clip_grad or float("inf"), mpu=self.mpu))
                self.guard.known_norm = self.grad_norm
            t2 = time.perf_counter()
            self.engine.step()
            self._time("batch-generator", t1 - t0)
            self._time("forward-backward", t2 - t1)
            self._time("optimizer", time.perf_counter() - t2)
            total += loss.detach().float()
        if not self.own_clip:
            norm = self.engine.get_global_grad_norm()
            self.grad_norm = float(norm) if norm is not None else float("nan")
        dp = self.groups.dp_size
        self.lm_loss, mean = self.report.value(dp > 1, self.groups.dp_group, [total / accum])  # one all-reduce
        return mean / dp

    def evaluate(self, dataset) -> float:
        """The validation loss over the first eval_iters global batches of `dataset` (training/evaluation.py);
        Megatron's `lm loss validation` is left in `lm_valid`."""
        loss, self.lm_valid = evaluate(self, dataset)
        return loss

    # ------------------------------------------------------------------ pipeline parallelism (parallel/pipeline.py)
    def _pipeline_module(self, model: torch.nn.Module) -> torch.nn.Module:
        """The seed-initialized (and TP-sharded) GPT carved into this rank's DeepSpeed pipeline stage."""
        p = self.job.parallel
        return build_pipeline(model, self.groups, self._pipeline_loss, partition_method=p.pipeline_partition,
                              checkpoint_interval=p.activation_checkpoint_interval,
                              part_names=self.objective.part_names, seed=self.job.training.seed,
                              head_loss_fn=self._pipeline_head_loss, label_keys=self.objective.label_keys,
                              rng_tracker=self.tp_rng)

    def _choose_loss_path(self):
        """The run's loss path (training/objective.choose_loss_path), once the engine (and so the optimizer)
        exists; the pipeline's head layer is switched to match. Under ZeRO-3, reading the head's weight for the
        fused kernel gathers it (DeepSpeed registers it as an external parameter)."""
        t, g = self.job.training, self.groups
        survive = not self.pipelined or loss_may_produce_gradients(self.engine.optimizer)
        path = choose_loss_path(self.objective, g.tp_size, g.pp_size, t.precision, t.fused_lm_loss, survive)
        if self.pipelined:
            self.engine.module.set_head_in_loss(path.head_in_loss)
            wanted = choose_loss_path(self.objective, g.tp_size, g.pp_size, t.precision, t.fused_lm_loss)
            if wanted.fused and not path.fused:
                log("note: the fused LM head + loss is off on this pipeline (DeepSpeed's bf16 optimizer at ZeRO-0 "
                    "clears gradients of parameters used only in the loss); --zero-stage 1 keeps it", self.rank)
        return path

    def _pipeline_loss(self, logits: torch.Tensor, batch: dict, train: bool):
        """Last stage: the objective's loss on this micro batch's (vocab-parallel) logits."""
        scale = self.token_scale if train else None
        out = self._reported(self.objective.loss(logits, batch, self.tp_group, train, token_scale=scale), batch,
                             train, scale)
        if train:
            self.guard.record_loss(out[0])
        return out

    def _pipeline_head_loss(self, head: torch.nn.Module, hidden: torch.Tensor, batch: dict, train: bool):
        """Last stage with the head in the loss: the head runs here, fused with the next-token loss (logits, then
        the objective's loss, for MIM training)."""
        z, scale = (self.job.training.z_loss, self.token_scale) if train else (0.0, None)
        fused = self.loss_path.kind(train) == FUSED
        if fused and z:
            loss, z_part = head_loss(head, hidden, batch["labels"], masked_mean_weights(batch["loss_mask"], scale), z)
            out = loss, {"z_loss": float(z_part)}
        elif fused:
            out = head_loss(head, hidden, batch["labels"], masked_mean_weights(batch["loss_mask"], scale)), {}
        else:
            out = self.objective.loss(head_logits(head, hidden), batch, self.tp_group, train, token_scale=scale)
        self._reported(out, batch, train, scale)
        if train:
            self.guard.record_loss(out[0])
        return out

    def _train_step_pipeline(self, batches) -> float:
        """engine.train_batch pulls `grad_accum` micro batches (first and last stage read the same ones: each
        rank has its own loader over its DP rank's samples); the loss comes back DP-averaged on every stage."""
        self.guard.begin_step()
        t0 = time.perf_counter()
        batches = self._per_token_batches(batches, self.step_accum)  # every stage reads its loader's batches
        loss = self.engine.train_batch(PipelineBatches(batches, self.objective.label_keys(True)))
        self._time("forward-backward", time.perf_counter() - t0)  # DeepSpeed's schedule runs the step inside
        parts = self.engine.get_additional_losses() or {}
        self.loss_parts = {k: float(v) for k, v in parts.items()}
        if self.own_clip:
            self.grad_norm = self.step_clipper.norm
        else:
            norm = self.engine.get_global_grad_norm()
            self.grad_norm = float(norm) if norm is not None else float("nan")
        self.lm_loss = self.report.value(True)[0]  # from the last stage's (DP) ranks to every rank
        return float(loss)

    # ------------------------------------------------------------------ bookkeeping
    def save(self) -> None:
        t = self.job.training
        recovery.check_weights_finite(self)
        tracker = self.tp_rng
        state = {"iteration": self.iteration, "consumed_samples": self.consumed, "rng": ckpt.rng_state(),
                 "tp_rng": tracker.get_states() if tracker is not None else None,
                 "tokenizer_fingerprint": self.tok_fp, "skip_samples": sorted(self.skip_samples),
                 "phase": self.phase,
                 "layout": self._layout(),
                 # for DeepSpeed's ds_to_universal (convert/ds_universal.py), and the config it carries along
                 "universal_checkpoint_info": universal_info(), "job_config": self.job.to_dict()}
        path = ckpt.save_checkpoint(self.engine, self.job, t.save, self.iteration, state, self.tokenizer,
                                    is_rank0=self.rank == 0, keep=t.keep_checkpoints)
        log(f"saved checkpoint {path}", self.rank)

    def _time(self, name: str, seconds: float) -> None:
        self.timers[name] = self.timers.get(name, 0.0) + seconds

    def _loss_scale(self) -> float:
        """The fp16 dynamic scale (DeepSpeed's loss_scale / cur_scale); 1.0 otherwise, as Megatron logs it."""
        scale = fp16_loss_scale(self.engine.optimizer) if self.job.training.precision == "fp16" else None
        return 1.0 if scale is None else scale

    def _set_step_batch(self, batch: int) -> None:
        """Global batch of the next step (config/batch_schedule.py): more or fewer accumulated micro batches."""
        per_step = self.job.training.micro_batch_size * self.groups.dp_size
        if batch != self.step_batch:
            self.engine.set_train_batch_size(batch)
            if self.step_batch != self.job.training.global_batch_size or self.iteration:
                log(f"global batch {self.step_batch} -> {batch} at iteration {self.iteration} "
                    f"({self.consumed} samples consumed)", self.rank)
            self.step_batch = batch
        self.step_accum = batch // per_step

    def _layout(self) -> dict:
        """The parallel layout a reshard needs, saved with every checkpoint: sizes, ZeRO stage and, with PP, the
        stage boundaries over the pipeline layers (stage s held layers [parts[s], parts[s+1]); DeepSpeed's
        partition, parallel/pipeline.py's layer list)."""
        layout = {"tp": self.groups.tp_size, "pp": self.groups.pp_size, "dp": self.groups.dp_size,
                  "zero": self.job.parallel.zero_stage}
        if self.pipelined:
            layout["pipeline_parts"] = [int(p) for p in self.engine.module.parts]
        return layout

    def _log_interval(self, loss_sum: float, steps: int, bar) -> None:
        t = self.job.training
        seconds = time.perf_counter() - self.throughput.t0
        tps, mfu = self.throughput.rates()
        loss, gn, scale, skipped = loss_sum / max(steps, 1), self.grad_norm, self._loss_scale(), self.skipped_steps
        lr, per_iter = self.engine.optimizer.param_groups[0]["lr"], seconds / max(steps, 1)
        tflops = tps * self.throughput.flops_per_token / 1e12 / self.world  # Megatron: TFLOP/s per GPU
        losses = {"lm loss": loss, **{k: v / max(steps, 1) for k, v in self.window_parts.items()}}
        line = megatron_log_line(self.iteration, t.train_iters, self.consumed, 1000 * per_iter, tflops, lr,
                                 self.step_batch, losses, scale, gn, skipped - self.skipped_at_window,
                                 self.nan_steps - self.nan_at_window, time.strftime("%Y-%m-%d %H:%M:%S"))
        log(f"{line} tokens/s: {tps:,.0f} | MFU: {100 * mfu:.2f}% | mem: {memory_gb():.2f} GB |", self.rank)
        self.skipped_at_window, self.nan_at_window = skipped, self.nan_steps
        self.sink.write(self.iteration, {"tokens_per_s": tps, "mfu": mfu, "grad_norm": gn, "lr": lr,
                                         "loss_scale": scale if t.precision == "fp16" else None,
                                         "memory_gb": memory_gb()}, kind="interval")
        samples, tokens = self.consumed, self.consumed * self.job.data.seq_length
        self.sink.megatron(self.iteration, samples, tokens, {
            "iteration-time": per_iter, "throughput": tflops,
            **{f"{name}-time": v / max(steps, 1) for name, v in self.timers.items()}})
        self.timers = {}
        if bar is not None:
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}")
        self.throughput.reset()

    def _agreed(self, flag: bool) -> bool:
        """True on every rank if it is true on any (clocks differ across ranks; the decision must not)."""
        if self.world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def _validate(self, history: dict) -> None:
        v = self.evaluate(self.data.valid)
        lm, it = self.lm_valid, self.iteration
        history["valid_loss"].append((it, v))
        self.sink.write(it, {"loss": v, "ppl": math.exp(min(v, 50)), "lm_loss": lm}, kind="valid")
        # Megatron caps the exponent at 20 for its "ppl" scalars and line (evaluate_and_print_results).
        self.sink.megatron(it, self.consumed, self.consumed * self.job.data.seq_length,
                           {"lm loss": lm, "lm loss ppl": math.exp(min(lm, 20))}, validation=True)
        log(f" validation loss at iteration {it} | lm loss value: {lm:.6E} | lm loss PPL: {math.exp(min(20, lm)):.6E} "
            f"| loss: {v:.6E} |", self.rank)
        self.throughput.reset()  # evaluation time is not training throughput

    def _train_loader(self):
        return iter(make_loader(self.data.train, self.job, self.consumed, self.groups.dp_rank, self.groups.dp_size,
                                Collate(self.objective, train=True), train=True))

    # ------------------------------------------------------------------ the loop
    def _should_stop(self, start_iter: int, started: float, stop: StopSignal) -> tuple[bool, str]:
        """(stop now?, why) - agreed across ranks so every rank saves and leaves at the same iteration."""
        t = self.job.training
        if t.exit_interval and self.iteration - start_iter >= t.exit_interval:
            return True, "exit interval"
        if t.exit_duration_mins and self._agreed(time.time() - started >= 60 * t.exit_duration_mins):
            return True, "exit duration"
        if self._agreed(stop.received is not None):  # a signal seen by any rank stops all
            return True, f"signal {stop.received}"
        return False, ""

    def _after_step(self, loss: float, lr: float, history: dict, bar) -> None:
        """Record one finished iteration: metrics, periodic log line, periodic validation."""
        t = self.job.training
        self.throughput.add(self.step_batch * self.job.data.seq_length)
        self.sink.write(self.iteration, {"loss": loss, "lr": lr, "consumed_samples": self.consumed,
                                         "global_batch_size": self.step_batch, "lm_loss": self.lm_loss,
                                         **self.loss_parts})
        # Megatron writes these every iteration (its --tensorboard-log-interval defaults to 1).
        self.sink.megatron(self.iteration, self.consumed, self.consumed * self.job.data.seq_length, {
            "learning-rate": lr, "batch-size": self.step_batch, "lm loss": self.lm_loss, "world-size": self.world,
            "loss-scale": self._loss_scale(), "grad-norm": self.grad_norm if math.isfinite(self.grad_norm) else None})
        history["train_loss"].append((self.iteration, loss))
        self.window_loss, self.window_steps = self.window_loss + self.lm_loss, self.window_steps + 1
        for k, v in self.loss_parts.items():  # MIM's terms, averaged over the window like the loss
            self.window_parts[k] = self.window_parts.get(k, 0.0) + v
        bar.update(1)
        if self.iteration % t.log_interval == 0 or self.iteration == t.train_iters:
            self._log_interval(self.window_loss, self.window_steps, bar)
            self.window_loss, self.window_steps, self.window_parts = 0.0, 0, {}
        if t.eval_interval and self.data.valid is not None and (
                self.iteration % t.eval_interval == 0 or self.iteration == t.train_iters):
            self._validate(history)

    def train(self) -> dict:
        """Train to --train-iters or a stop; the --save lock goes with the job (another Trainer may then take it)."""
        try:
            return self._train()
        finally:
            if self.save_lock is not None:
                self.save_lock.release()

    def _train(self) -> dict:
        job, t = self.job, self.job.training
        batches = self._train_loader()
        bar = tqdm(total=t.train_iters, initial=self.iteration, desc="train", unit="it", dynamic_ncols=True,
                   disable=self.rank != 0 or not t.progress_bar, file=sys.stderr, mininterval=1.0)
        history = {"train_loss": [], "valid_loss": []}
        self.window_loss, self.window_steps, start_iter = 0.0, 0, self.iteration
        self.window_parts = {}
        if self.resume_rng is not None:
            ckpt.set_rng_state(self.resume_rng)
            tracker = self.tp_rng
            if tracker is not None and self.resume_tp_rng:
                tracker.set_states(self.resume_tp_rng)  # dropout inside TP regions continues its own stream
        if t.eval_interval and self.data.valid is not None and self.iteration == 0:
            self._validate(history)  # the untrained model's loss: the baseline every later value is read against
        if not t.save:
            log("no --save: this run writes no checkpoint (its training is lost when it ends)", self.rank)
        self.throughput.reset()
        started = time.time()
        # the loop is watched by a heartbeat when there are several ranks (parallel/lifecycle.py)
        with StopSignal() as stop, watched(self.rank, self.world, job.parallel.distributed_timeout_minutes):
            while self.iteration < t.train_iters:
                recovery.skip_rejected(self, batches)
                self._set_step_batch(self.schedule.batch_at(self.iteration, self.consumed))
                # LR progress in samples, as Megatron's scheduler counts (training/lr_schedule.py)
                progress = (self.consumed + self.step_batch) / t.global_batch_size
                lr = lr_at(self.iteration, job.optim, t.train_iters, progress=progress)
                lr_dec = lr if self.decoupled is None else lr_at(self.iteration, self.decoupled, t.train_iters,
                                                                 progress=progress)
                for group in self.engine.optimizer.param_groups:
                    group["lr"] = lr_dec if group.get("decoupled") else lr
                loss = self.train_step(batches)
                self.iteration += 1
                self.consumed += self.step_batch
                verdict = self.guard.verdict(t.precision)
                if verdict.skipped:
                    bar.update(1)
                    if recovery.on_skipped(self, verdict):
                        recovery.rollback(self)
                        batches = self._train_loader()
                        bar.n = self.iteration
                        continue
                else:
                    self.bad_streak, self.bad_batches = 0, []
                    self._after_step(loss, lr, history, bar)
                stopping, why = self._should_stop(start_iter, started, stop)
                last = self.iteration == t.train_iters
                # No periodic save inside a run of refused steps: the weights are the last good step's, which the
                # previous save (or the next good step's) holds; the run may yet stop or roll back.
                periodic = t.save_interval and self.iteration % t.save_interval == 0 and not self.bad_streak
                if t.save and (last or stopping or periodic):
                    self.save()
                if stopping:
                    log(f"stopping at iteration {self.iteration} ({why})", self.rank)
                    break
        bar.close()
        self.sink.close()
        return history


def pretrain(job: JobConfig) -> dict:
    """Run a job to completion (or to its exit interval / stop signal). Returns the loss history."""
    if job.phases:
        from .phases import run_phases
        return run_phases(job)
    trainer = Trainer(job)
    t0 = time.time()
    history = trainer.train()
    log(f"done in {time.time() - t0:.1f} s", trainer.rank)
    return history
