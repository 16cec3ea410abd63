"""Weight initialization, separate from module construction so models can be built on `meta` and sharded first.

Normal(0, init_std) for embeddings and projections; output projections (o_proj, fc_out, down_proj) use
init_std / sqrt(2 x num_layers) when scaled_init (GPT-2, Radford et al., 2019, sec. 2.3; Megatron's
scaled_init_method_normal); biases zero; norm weights one.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config.model import ModelConfig

OUTPUT_PROJECTIONS = ("o_proj", "fc_out", "down_proj")


@torch.no_grad()
def init_gpt_weights(model: nn.Module, cfg: ModelConfig, generator: torch.Generator | None = None) -> None:
    std = cfg.init_std
    out_std = std / math.sqrt(2.0 * cfg.num_layers) if cfg.scaled_init else std
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(module, nn.Linear):
            module.weight.normal_(0.0, out_std if leaf in OUTPUT_PROJECTIONS else std, generator=generator)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, std, generator=generator)
        elif hasattr(module, "weight") and "norm" in leaf:
            module.weight.fill_(1.0)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
