"""Megatron-LM / Megatron-DeepSpeed flags that set nothing here: accepted as notes (no effect, with why) or
refused (a feature we do not have, with why). The flags that set a config field are in cli.MEGATRON_FLAGS; the
whole coverage is listed in tests/fixtures/megatron_flags.tsv (see docs/megatron.md)."""

from __future__ import annotations

from typing import Any

# Flags for features we do not have: an error naming why (arity, message), never silently ignored.
ERROR_FLAGS: dict[str, tuple[Any, str]] = {
    "num-layers-per-virtual-pipeline-stage": (
        1, "the interleaved (virtual pipeline) schedule is not supported: DeepSpeed's pipeline engine runs one "
           "stage per rank; remove the flag"),
    "virtual-pipeline-model-parallel-size": (
        1, "the interleaved (virtual pipeline) schedule is not supported: DeepSpeed's pipeline engine runs one "
           "stage per rank; remove the flag"),
    "fp8-format": (1, "FP8 training needs Transformer Engine, which is not used here; remove the fp8 flags"),
    "fp8-recipe": (1, "FP8 training needs Transformer Engine, which is not used here; remove the fp8 flags"),
    "train-data-exact-num-epochs": (1, "Megatron-DeepSpeed's exact-epoch data mode is not supported; give the run "
                                       "length in --train-iters/--train-samples/--train-tokens"),
    "random-ltd": (0, "DeepSpeed's random layerwise token dropping is not supported; remove the flag"),
    "data-efficiency-curriculum-learning": (0, "DeepSpeed data-efficiency curriculum learning is not supported; "
                                               "remove the flag"),
    "mos": (0, "Mixture-of-Students distillation is not supported; remove the flag"),
    "kd": (0, "knowledge distillation is not supported; remove the flag"),
    "load-teacher": (1, "knowledge distillation is not supported; remove the teacher flags"),
    "enable-zbh1-pipeline": (0, "the zero-bubble pipeline schedule is not supported (DeepSpeed's 1F1B schedule "
                                "runs); remove the flag"),
    "ds-sequence-parallel-fpdt": (0, "FPDT long-sequence training is not supported; remove the flag"),
    "reset-iteration": (0, "resetting the iteration counter on load is not supported: use --finetune (weights only, "
                           "iteration 0) or resume as saved"),
    "num-layers-per-stage": (1, "uneven pipeline stages by layer count are not supported: stages are balanced by "
                                "--parallel.pipeline_partition; remove the flag"),
    "swiglu-activation-offloading": (0, "activation offloading is not supported; remove the flag"),
}

# Flags accepted only at the value that means "off" (Megatron-DeepSpeed's MoE scripts pass --num-experts 1, Ulysses
# scripts --ds-sequence-parallel-size 1): (arity, off values, why any other value is refused).
_NO_MOE = "mixture-of-experts layers are not supported (dense models only)"
OFF_FLAGS: dict[str, tuple[Any, tuple[str, ...], str]] = {
    "num-experts": (1, ("1",), _NO_MOE),
    "moe-expert-parallel-size": (1, ("1",), _NO_MOE),
    "expert-model-parallel-size": (1, ("1",), _NO_MOE),
    "expert-tensor-parallel-size": (1, ("1",), _NO_MOE),
    "ds-sequence-parallel-size": (1, ("1",), "DeepSpeed-Ulysses sequence parallelism is not supported (Megatron "
                                             "--sequence-parallel with TP is)"),
    "context-parallel-size": (1, ("1",), "context parallelism is not supported (Megatron --sequence-parallel with TP "
                                         "is)"),
    "ckpt-format": (1, ("torch",), "checkpoints are written in DeepSpeed's layout; tools/convert_checkpoint.py "
                                   "--to megatron-lm [--ckpt-format torch_dist] writes Megatron-LM's formats; drop "
                                   "the flag or use --ckpt-format torch"),
    "exit-signal": (1, ("SIGTERM", "SIGUSR1", "SIGINT", "15", "10", "2"), "the trainer stops cleanly on SIGTERM, "
                                                                            "SIGUSR1 or SIGINT only"),
}


# Accepted for compatibility, no effect here (arity, why).
NOOP_FLAGS: dict[str, tuple[Any, str]] = {
    "exit-signal-handler": (0, "always on: SIGTERM/SIGUSR1 (and a first Ctrl-C) save a checkpoint at the next "
                               "iteration and exit, as Megatron's handler does"),
    "moe-loss-coeff": (1, "no experts (--num-experts 1)"),
    "moe-aux-loss-coeff": (1, "no experts (--num-experts 1)"),
    "moe-train-capacity-factor": (1, "no experts (--num-experts 1)"),
    "moe-eval-capacity-factor": (1, "no experts (--num-experts 1)"),
    "moe-min-capacity": (1, "no experts (--num-experts 1)"),
    "moe-router-topk": (1, "no experts (--num-experts 1)"),
    "moe-router-load-balancing-type": (1, "no experts (--num-experts 1)"),
    "moe-token-dispatcher-type": (1, "no experts (--num-experts 1)"),
    "moe-grouped-gemm": (0, "no experts (--num-experts 1)"),
    "disable-moe-token-dropping": (0, "no experts (--num-experts 1)"),
    "create-moe-param-group": (0, "no experts (--num-experts 1)"),
    "cross-entropy-loss-fusion": (0, "the fused LM head + loss kernel is used where it applies"),
    "grad-reduce-in-bf16": (0, "the gradient reduction dtype is DeepSpeed's: set data_types.grad_accum_dtype in the "
                               "DeepSpeed JSON"),
    "manual-gc": (0, "Python's garbage collector runs as usual (a performance switch)"),
    "manual-gc-interval": (1, "Python's garbage collector runs as usual (a performance switch)"),
    "empty-unused-memory-level": (1, "the CUDA caching allocator is left alone (a performance switch)"),
    "profile": (0, "no built-in profiler: wrap the run in torch.profiler or nsys"),
    "profile-step-start": (1, "no built-in profiler"),
    "profile-step-end": (1, "no built-in profiler"),
    "use-flash-attn-triton": (0, "the attention kernel is chosen automatically"),
    "no-load-lr-state": (0, "the LR schedule is a function of the iteration and the command line"),
    "repeated-dataloader": (0, "the data loader already continues into the next epoch"),
    "log-loss-scale-to-tensorboard": (0, "always logged"),
    "no-log-loss-scale-to-tensorboard": (0, "the loss scale is always logged"),
    "tp-comm-overlap": (0, "communication overlap is not available (no Transformer Engine)"),
    "async-save": (0, "checkpoints are written synchronously, staged and renamed into place"),
    "use-torch-fsdp2": (0, "data parallelism is DeepSpeed's ZeRO"),
    "ckpt-fully-parallel-save": (0, "DeepSpeed writes one file per model-parallel rank"),
    "ckpt-fully-parallel-load": (0, "DeepSpeed reads one file per model-parallel rank"),
    "no-ckpt-fully-parallel-save": (0, "DeepSpeed writes one file per model-parallel rank"),
    "dist-ckpt-strictness": (1, "loading is always strict (mismatched keys are an error)"),
    "bf16-reduce-in-fp32": (0, "the reduction dtype is DeepSpeed's"),
    "check-for-nan-in-loss-and-grad": (0, "always on: a step with a non-finite loss or gradient is never taken"),
    "group-query-attention": (0, "GQA follows from --num-query-groups"),
    "use-flash-attn": (0, "the attention kernel is chosen automatically (flash-attn on CUDA when installed)"),
    "use-flash-attn-v2": (0, "the attention kernel is chosen automatically"),
    "no-query-key-layer-scaling": (0, "we always scale by 1/sqrt(head_dim) with fp32 softmax"),
    "apply-query-key-layer-scaling": (0, "we always scale by 1/sqrt(head_dim) with fp32 softmax"),
    "attention-softmax-in-fp32": (0, "softmax accumulates in fp32 already"),
    "no-masked-softmax-fusion": (0, "fusions are selected automatically"),
    "no-bias-gelu-fusion": (0, "fusions are selected automatically"),
    "no-bias-dropout-fusion": (0, "fusions are selected automatically"),
    "no-gradient-accumulation-fusion": (0, "fusions are selected automatically"),
    "no-async-tensor-model-parallel-allreduce": (0, "no effect on CPU/gloo"),
    "use-cpu-initialization": (0, "weights are initialized on the CPU when no GPU is present"),
    "log-timers-to-tensorboard": (0, "always logged"),
    "log-batch-size-to-tensorboard": (0, "always logged"),
    "log-validation-ppl-to-tensorboard": (0, "always logged"),
    "log-num-zeros-in-grad": (0, "not logged"),
    "log-params-norm": (0, "not logged"),
    "tensorboard-queue-size": (1, "queue size is managed by TensorBoard"),
    "DDP-impl": (1, "data parallelism is DeepSpeed's"),
    "deepspeed-activation-checkpointing": (0, "activation checkpointing follows --checkpoint-activations"),
    "partition-activations": (0, "not used on CPU"),
    "contigious-checkpointing": (0, "not used on CPU"),
    "synchronize-each-layer": (0, "not used on CPU"),
    "tensorboard-log-interval": (1, "TensorBoard scalars are written at every --log-interval"),
    "log-optimizer-states-to-tensorboard": (0, "not logged"),
    "accumulate-allreduce-grads-in-fp32": (0, "the gradient accumulation/all-reduce dtype is DeepSpeed's: set "
                                              "data_types.grad_accum_dtype in the DeepSpeed JSON"),
    "checkpoint-in-cpu": (0, "activation checkpoints stay on the compute device"),
    "fp16-lm-cross-entropy": (0, "the loss is always computed in fp32"),
    "override-opt_param-scheduler": (0, "the LR schedule is a function of the iteration and the command line"),
    "use-checkpoint-opt_param-scheduler": (0, "the LR schedule is a function of the iteration and the command line"),
    "override-lr-scheduler": (0, "the LR schedule is a function of the iteration and the command line"),
    "use-checkpoint-lr-scheduler": (0, "the LR schedule is a function of the iteration and the command line"),
    # Newer Megatron-LM (core) implementation switches: one implementation here.
    "use-mcore-models": (0, "one model implementation"),
    "use-legacy-models": (0, "one model implementation"),
    "transformer-impl": (1, "one model implementation (PyTorch; fused kernels chosen automatically)"),
    "attention-backend": (1, "the attention kernel is chosen automatically"),
    "no-bias-swiglu-fusion": (0, "fusions are selected automatically"),
    "no-rope-fusion": (0, "fusions are selected automatically"),
    "no-persist-layer-norm": (0, "fusions are selected automatically"),
    "overlap-grad-reduce": (0, "communication overlap is DeepSpeed's (its JSON: overlap_comm)"),
    "overlap-param-gather": (0, "communication overlap is DeepSpeed's (its JSON: overlap_comm)"),
    "log-throughput": (0, "tokens/s and MFU are always logged"),
    "log-memory-to-tensorboard": (0, "memory is always logged"),
    "log-world-size-to-tensorboard": (0, "the layout is printed at start"),
    "timing-log-level": (1, "no timers beyond the per-interval log line"),
}
