"""Optimizer construction: AdamW with no weight decay on biases, norms and other 1-D parameters (Megatron's
`get_param_groups`, Loshchilov & Hutter 2019 for decoupled decay)."""

from __future__ import annotations

import torch
from torch import nn

from ..config.optim import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        ndim = len(getattr(p, "ds_shape", p.shape))  # ZeRO-3 (zero.Init) leaves an empty 1-D placeholder in p
        (no_decay if ndim < 2 or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    for g in groups:
        g.pop("name")
    # fused=True: one vectorized pass per tensor (CPU and CUDA kernels in torch >= 2.4) instead of ~10 elementwise
    # ops per tensor; the same AdamW formula, equal to the for-loop implementation within 1 ulp, and 3-5x faster
    # on our 2-core CPU for the 7M-parameter benchmark model (benchmarks/bench_trainer_vs_hf.py).
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps,
                             fused=_fused_ok(groups))


def _fused_ok(groups: list[dict]) -> bool:
    """torch's fused AdamW takes floating-point tensors on CPU or CUDA (not meta, not other accelerators)."""
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
