"""Weight initialization, separate from module construction so models can be built on `meta` and sharded first.

Normal(0, init_std) for embeddings and projections; output projections (o_proj, fc_out, down_proj) use
init_std / sqrt(2 x num_layers) when scaled_init (GPT-2, Radford et al., 2019, sec. 2.3; Megatron's
scaled_init_method_normal); biases zero; norm weights one (zero for a zero-centred gain, model/norm.py).

Layout-free by construction: every Linear / Embedding draws its weight from its OWN generator, seeded with one
62-bit number taken from the caller's generator in `named_modules()` order of the whole GPT (`module_seeds`). So a
parameter's values depend only on (seed, which module, full shape, std): not on the device or on which other
modules exist. A module that holds only part of a larger weight (a tensor-parallel layer) draws its values itself:
it defines `draw_normal(pname, std, seed, dtype, device, empty)` and this module asks nothing else of it; how a
part is drawn, a meta model materialised or a ZeRO-3 range filled is parallel/sharded_init.py's.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..config.model import ModelConfig

OUTPUT_PROJECTIONS = ("o_proj", "fc_out", "down_proj")
_SEED_HIGH = 2 ** 62


def _draws(module: nn.Module) -> bool:
    """Modules whose weight is random (one seed each); norms and containers draw nothing."""
    return isinstance(module, (nn.Linear, nn.Embedding))


def _is_norm(leaf: str, module: nn.Module) -> bool:
    return "norm" in leaf and hasattr(module, "weight")


def module_seeds(model: nn.Module, generator: torch.Generator | None = None) -> dict[str, int]:
    """{module name: seed} for every Linear / Embedding of `model` (a whole GPT, possibly on meta and/or already
    TP-sharded: names and order are the GPT's), one draw from `generator` (torch's global RNG if None) each, in
    `named_modules()` order."""
    seeds = {}
    for name, module in model.named_modules():
        if _draws(module):
            # explicit device: callers may run under `with torch.device("meta")`
            device = generator.device if generator is not None else "cpu"
            seeds[name] = int(torch.randint(0, _SEED_HIGH, (), generator=generator, device=device))
    return seeds


def _weight_std(leaf: str, cfg: ModelConfig) -> float:
    if leaf in OUTPUT_PROJECTIONS and cfg.scaled_init:
        return cfg.init_std / math.sqrt(2.0 * cfg.num_layers)
    return cfg.init_std


def _draw_std(name: str, leaf: str, module: nn.Module, cfg: ModelConfig) -> float:
    """Std of a drawn weight. By module name, not type: under TP the word embedding is a vocab-parallel layer."""
    if name == "embed.word" and cfg.embedding_init_std is not None:
        return cfg.embedding_init_std
    return _weight_std(leaf, cfg) if isinstance(module, nn.Linear) else cfg.init_std


def init_rule(name: str, module: nn.Module, cfg: ModelConfig, pname: str) -> Optional[tuple[str, float]]:
    """How parameter `pname` of module `name` of the GPT starts: ("normal", std) drawn from the module's seed,
    ("fill", value), or None when the rules leave it alone."""
    leaf = name.rsplit(".", 1)[-1]
    if pname == "weight" and _draws(module):
        return "normal", _draw_std(name, leaf, module, cfg)
    if pname == "bias" and (_draws(module) or _is_norm(leaf, module)):
        return "fill", 0.0
    if pname == "weight" and _is_norm(leaf, module):  # a zero-centred gain (1 + w, model/norm.py) starts at 0
        return "fill", 0.0 if getattr(module, "zero_centered", False) else 1.0
    return None


def initial_value(name: str, module: nn.Module, cfg: ModelConfig, seed: Optional[int], pname: str,
                  like: torch.Tensor, device=None, empty=None) -> Optional[torch.Tensor]:
    """The initial values of `module.<pname>` (module `name` of the GPT, `seed` from `module_seeds`), shaped and
    typed like `like`, on `device` (default: like's); None if the rules leave the parameter alone. A random weight
    is drawn whole into `empty(shape, dtype)` (default: a new tensor), or by the module itself when it holds part
    of a larger weight (its `draw_normal`)."""
    rule = init_rule(name, module, cfg, pname)
    if rule is None:
        return None
    kind, value = rule
    device = torch.device(like.device if device is None else device)
    if kind == "fill":
        return torch.full(like.shape, value, dtype=like.dtype, device=device)
    if seed is None:
        raise KeyError(f"no init seed for module '{name}': seeds come from module_seeds() of the whole GPT")
    own = getattr(module, "draw_normal", None)
    if own is not None:
        return own(pname, value, seed, like.dtype, device, empty)
    g = torch.Generator().manual_seed(seed)
    full = empty(like.shape, like.dtype) if empty is not None else torch.empty(like.shape, dtype=like.dtype,
                                                                                  device=device)
    return full.normal_(0.0, value, generator=g)


@torch.no_grad()
def init_module(name: str, module: nn.Module, cfg: ModelConfig, seed: Optional[int]) -> None:
    """Initialize `module`'s own parameters in place (module `name` of the GPT; `seed` from `module_seeds`)."""
    for pname, p in module.named_parameters(recurse=False):
        value = initial_value(name, module, cfg, seed, pname, p)
        if value is not None:
            p.copy_(value)


@torch.no_grad()
def init_gpt_weights(model: nn.Module, cfg: ModelConfig, generator: torch.Generator | None = None) -> None:
    """Initialize every parameter of `model` in place (a whole GPT, possibly TP-sharded: each rank gets its slice
    of the single-process weights). `generator` (torch's global RNG if None) supplies one seed per module."""
    seeds = module_seeds(model, generator)
    for name, module in model.named_modules():
        init_module(name, module, cfg, seeds.get(name))
