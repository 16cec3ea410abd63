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
}

# Accepted for compatibility, no effect here (arity, why).
NOOP_FLAGS: dict[str, tuple[Any, str]] = {
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
