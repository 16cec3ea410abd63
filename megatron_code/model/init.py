"""Weight initialization, separate from module construction so models can be built on `meta` and sharded first.

Normal(0, init_std) for embeddings and projections; output projections (o_proj, fc_out, down_proj) use
init_std / sqrt(2 x num_layers) when scaled_init (GPT-2, Radford et al., 2019, sec. 2.3; Megatron's
scaled_init_method_normal); biases zero; norm weights one.

Layout-free by construction: every Linear / Embedding draws its weight from its OWN generator, seeded with one
62-bit number taken from the caller's generator in `named_modules()` order of the whole GPT (`module_seeds`). The
weight is always drawn at its FULL (unsharded) shape and a tensor-parallel layer keeps its part
(`full_param_shape` / `shard_param`, duck-typed: `model/` knows nothing of `parallel/`). So a parameter's values
depend only on (seed, which module, full shape, std): not on the device, on which other modules a rank holds, or on
the TP/PP layout, and a rank can materialise only its own shard (`materialize_gpt_params`) or, under ZeRO-3, its
range of the flattened parameter (`init_flat_part`).

A rank's part of a sharded weight is drawn without the full tensor when that part is one `narrow()` of it (every
TP layer's is): CPU `normal_` takes one uniform per element in order and transforms them in blocks of 16, so
drawing the full tensor in pieces whose sizes are multiples of 16 gives the same bits, and each piece is cut down
to this rank's part before the next is drawn (`draw_narrow`). Peak memory is one piece, not the full weight (the
PaLM-540B word embedding is 18.9 GB in fp32). A self-check at first use falls back to whole draws if a torch
version ever breaks that property.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import torch
from torch import nn

from ..config.model import ModelConfig

OUTPUT_PROJECTIONS = ("o_proj", "fc_out", "down_proj")
_SEED_HIGH = 2 ** 62
PIECE_ELEMENTS = 1 << 24  # elements per piece of a chunked draw (64 MB in fp32)


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


def _full_shape(module: nn.Module, pname: str) -> torch.Size:
    shape = getattr(module, "full_param_shape", None)
    return shape(pname) if shape is not None else getattr(module, pname).shape


def _local_part(module: nn.Module, pname: str, full: torch.Tensor) -> torch.Tensor:
    shard = getattr(module, "shard_param", None)
    return shard(pname, full) if shard is not None else full


def narrow_spec(module: nn.Module, pname: str, shape: torch.Size) -> Optional[tuple[int, int, int]]:
    """(dim, start, length) when this rank's part of the full parameter is exactly `full.narrow(dim, start,
    length)` of a smaller size; None when it is the whole tensor or not a single narrow. Found by applying the
    module's own `shard_param` to a meta tensor, so it follows whatever the layer does."""
    shard = getattr(module, "shard_param", None)
    if shard is None:
        return None
    full = torch.empty(shape, device="meta")
    part = shard(pname, full)
    dims = [d for d in range(len(shape)) if part.shape[d] != shape[d]]
    if len(dims) != 1 or part.stride() != full.stride():
        return None
    d = dims[0]
    if part.storage_offset() % full.stride(d):
        return None
    return d, part.storage_offset() // full.stride(d), part.shape[d]


def _pieces(total: int, unit: int, piece: int):
    """[lo, hi) ranges in units of `unit` elements covering [0, total) units: every piece but the last holds a
    multiple of 16 elements and the last holds at least 16 (normal_'s blocks; a smaller last piece is merged
    into the one before)."""
    step = max(1, piece // unit)
    step = -(-step // (16 // math.gcd(16, unit))) * (16 // math.gcd(16, unit))  # step * unit % 16 == 0
    lo = 0
    while lo < total:
        hi = min(total, lo + step)
        if hi < total and (total - hi) * unit < 16:
            hi = total
        yield lo, hi
        lo = hi


def draw_narrow(shape, dtype: torch.dtype, std: float, seed: int, dim: int, start: int, length: int,
                piece: Optional[int] = None, empty=None, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Bitwise `torch.empty(shape, dtype=dtype).normal_(0, std, generator=Generator().manual_seed(seed))
    .narrow(dim, start, length)` (contiguous, CPU), drawing the full tensor in pieces of about `piece` elements
    (into `empty(shape, dtype)` when given, e.g. a reused buffer). Needs at least 16 elements in all (smaller
    tensors take normal_'s scalar path). `piece` defaults to PIECE_ELEMENTS. `out` (contiguous, the part's
    shape and dtype) receives the result instead of a new tensor."""
    shape = tuple(shape)
    piece = PIECE_ELEMENTS if piece is None else piece
    outer, inner = math.prod(shape[:dim]), math.prod(shape[dim + 1:])
    empty = empty or (lambda sh, dt: torch.empty(sh, dtype=dt))
    g = torch.Generator().manual_seed(seed)
    part_shape = shape[:dim] + (length,) + shape[dim + 1:]
    if out is not None and (tuple(out.shape) != part_shape or out.dtype != dtype or not out.is_contiguous()):
        raise ValueError(f"out must be a contiguous {dtype} tensor of shape {part_shape}")
    result = out if out is not None else torch.empty(part_shape, dtype=dtype)
    out = result.view(outer, length, inner)
    if dim == 0:  # the part is one contiguous range of the stream: stop drawing once it is complete
        want_lo, want_hi = start * inner, (start + length) * inner
        flat = out.view(-1)
        for lo, hi in _pieces(math.prod(shape), 1, piece):
            if lo >= want_hi:
                break
            chunk = empty((hi - lo,), dtype).normal_(0.0, std, generator=g)
            a, b = max(lo, want_lo), min(hi, want_hi)
            if a < b:
                flat[a - want_lo:b - want_lo] = chunk[a - lo:b - lo]
    else:  # whole rows of the (outer, shape[dim] * inner) layout, each cut to the part
        row = shape[dim] * inner
        for lo, hi in _pieces(outer, row, piece):
            chunk = empty((hi - lo, shape[dim], inner), dtype).normal_(0.0, std, generator=g)
            out[lo:hi] = chunk.narrow(1, start, length)
    return result


@functools.lru_cache(maxsize=None)
def chunked_draws_exact(dtype: torch.dtype) -> bool:
    """True when pieces of normal_ reproduce one whole draw bitwise in this torch build (checked once per dtype,
    on a tensor whose size is not a multiple of 16, in pieces of 16 and 32)."""
    whole = torch.empty(7, 13, dtype=dtype).normal_(0.0, 1.0, generator=torch.Generator().manual_seed(1))
    return all(torch.equal(draw_narrow((7, 13), dtype, 1.0, 1, dim, 1, 5, piece=p), whole.narrow(dim, 1, 5))
               for dim in (0, 1) for p in (16, 32))


def _init_values(name: str, module: nn.Module, cfg: ModelConfig, seed: Optional[int], pname: str,
                 like: torch.Tensor, device=None, empty=None) -> Optional[torch.Tensor]:
    """This rank's values of `module.<pname>` (module `name` of the GPT), shaped and typed like `like`, on
    `device` (default: like's); None if the rules leave the parameter alone. A random weight that this rank holds
    only a narrow part of is drawn piece by piece (`draw_narrow`, peak: one piece); otherwise it is drawn whole
    into `empty(shape, dtype)` (default: a new tensor) and the result is this rank's view of it."""
    leaf = name.rsplit(".", 1)[-1]
    device = torch.device(like.device if device is None else device)
    if pname == "weight" and _draws(module):
        if seed is None:
            raise KeyError(f"no init seed for module '{name}': seeds come from module_seeds() of the whole GPT")
        std = _draw_std(name, leaf, module, cfg)
        shape = _full_shape(module, pname)
        spec = narrow_spec(module, pname, shape)
        if (spec is not None and device.type == "cpu" and math.prod(shape) >= 16
                and chunked_draws_exact(like.dtype)):
            return draw_narrow(shape, like.dtype, std, seed, *spec, empty=empty)
        g = torch.Generator().manual_seed(seed)
        full = empty(shape, like.dtype) if empty is not None else torch.empty(shape, dtype=like.dtype, device=device)
        return _local_part(module, pname, full.normal_(0.0, std, generator=g))
    if pname == "bias" and (_draws(module) or _is_norm(leaf, module)):
        return torch.zeros(like.shape, dtype=like.dtype, device=device)
    if pname == "weight" and _is_norm(leaf, module):  # a zero-centred gain (1 + w, model/norm.py) starts at 0
        fill = torch.zeros if getattr(module, "zero_centered", False) else torch.ones
        return fill(like.shape, dtype=like.dtype, device=device)
    return None


@torch.no_grad()
def init_flat_part(name: str, module: nn.Module, cfg: ModelConfig, seed: Optional[int], pname: str,
                   shape: torch.Size, start: int, out: torch.Tensor) -> bool:
    """Write elements [start, start + out.numel()) of the flattened single-process initial value of
    `module.<pname>` (full shape `shape`) into `out` (1-D, CPU); False if the rules leave the parameter alone. For
    ZeRO-3, whose ranks each hold one such range of every parameter: a random weight is drawn in pieces straight
    into `out` (peak: one piece), so no rank ever holds the whole weight (when the self-check of
    `chunked_draws_exact` fails, the weight is drawn whole instead)."""
    leaf = name.rsplit(".", 1)[-1]
    numel, length = math.prod(shape), out.numel()
    if pname == "weight" and _draws(module):
        if seed is None:
            raise KeyError(f"no init seed for module '{name}': seeds come from module_seeds() of the whole GPT")
        std = _draw_std(name, leaf, module, cfg)
        if numel >= 16 and chunked_draws_exact(out.dtype):
            draw_narrow((numel,), out.dtype, std, seed, 0, start, length, out=out)
        else:
            g = torch.Generator().manual_seed(seed)
            out.copy_(torch.empty(numel, dtype=out.dtype).normal_(0.0, std, generator=g)[start:start + length])
        return True
    if pname == "bias" and (_draws(module) or _is_norm(leaf, module)):
        out.zero_()
        return True
    if pname == "weight" and _is_norm(leaf, module):
        out.fill_(0.0 if getattr(module, "zero_centered", False) else 1.0)
        return True
    return False


class Scratch:
    """One reusable buffer per dtype for the full-size draws and the pieces of chunked ones. A fresh tensor per
    weight, freed right after its shard is copied out, fragments glibc's heap (its mmap threshold adapts upwards):
    on a TP2 x PP2 build of a 650 MB model the resident growth was 1.7x the rank's 163 MB shard; with one reused
    buffer 1.2x. Share one across all the calls of a build (a pipeline stage materialises layer by layer): one per
    layer left 92 MB of freed memory in the heap of each rank of a TP2 x PP2 democratize-300m build."""

    def __init__(self, device):
        self.device, self.buffers = device, {}

    def __call__(self, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        n = math.prod(shape)
        buf = self.buffers.get(dtype)
        if buf is None or buf.numel() < n:
            self.buffers[dtype] = buf = None  # free the smaller one first
            buf = self.buffers[dtype] = torch.empty(n, dtype=dtype, device=self.device)
        return buf[:n].view(shape)


@torch.no_grad()
def init_module(name: str, module: nn.Module, cfg: ModelConfig, seed: Optional[int]) -> None:
    """Initialize `module`'s own parameters in place (module `name` of the GPT; `seed` from `module_seeds`)."""
    for pname, p in module.named_parameters(recurse=False):
        value = _init_values(name, module, cfg, seed, pname, p)
        if value is not None:
            p.copy_(value)


@torch.no_grad()
def init_gpt_weights(model: nn.Module, cfg: ModelConfig, generator: torch.Generator | None = None) -> None:
    """Initialize every parameter of `model` in place (a whole GPT, possibly TP-sharded: each rank gets its slice
    of the single-process weights). `generator` (torch's global RNG if None) supplies one seed per module."""
    seeds = module_seeds(model, generator)
    for name, module in model.named_modules():
        init_module(name, module, cfg, seeds.get(name))


@torch.no_grad()
def materialize_gpt_params(root: nn.Module, cfg: ModelConfig, seeds: dict[str, int],
                           device: torch.device | str = "cpu", scratch: Optional[Scratch] = None) -> int:
    """Give every parameter of `root` that is still on the `meta` device real storage on `device`, holding this
    rank's part of the single-process initial weights. `root`'s module names must be GPT names (a GPT, or a
    pipeline layer that keeps its modules under their GPT paths); `seeds` are `module_seeds()` of the whole GPT.

    Each parameter is replaced by a new nn.Parameter carrying the old one's attributes (tensor_model_parallel,
    partition_dim...); peak extra memory is one piece of a chunked draw for TP-sharded weights, else one full
    weight. Parameters already real are left alone (a module shared between pipeline layers is materialised
    once). `scratch`: a `Scratch(device)` to share with other calls of the same build (default: a new one). Returns
    the number of elements created."""
    created, scratch = 0, (scratch if scratch is not None else Scratch(device))
    for name, module in root.named_modules():
        for pname, p in list(module.named_parameters(recurse=False)):
            if p.device.type != "meta":
                continue
            value = _init_values(name, module, cfg, seeds.get(name), pname, p, device, scratch)
            if value is None:
                raise ValueError(f"'{name}.{pname}' has no init rule: cannot materialise it from the seed")
            data = value.clone() if value._base is not None else value  # out of the scratch buffer
            new = nn.Parameter(data, requires_grad=p.requires_grad)
            new.__dict__.update(p.__dict__)  # tensor_model_parallel, partition_dim, ...
            module._parameters[pname] = new
            created += new.numel()
    return created

