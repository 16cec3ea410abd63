"""Distribution-aware initialisation: a rank creates only its part of the single-process initial weights.

The rules (which std, which seed, what a norm starts at) are the model's (`model/init.py`: `init_rule`,
`module_seeds`, `initial_value`); this module holds what only a sharded or partitioned build needs:

- `draw_part`: a tensor-parallel layer's part of a weight drawn at its full shape (parallel/layers.py's layers call
  it from their `draw_normal`, which `model/init.initial_value` asks for). When that part is one `narrow()` of the
  full tensor (every TP layer's is), it is drawn without the full tensor: CPU `normal_` takes one uniform per
  element in order and transforms them in blocks of 16, so drawing the full tensor in pieces whose sizes are
  multiples of 16 gives the same bits, and each piece is cut down to this rank's part before the next is drawn
  (`draw_narrow`). Peak memory is one piece, not the full weight (the PaLM-540B word embedding is 18.9 GB in
  fp32). A self-check at first use falls back to whole draws if a torch version ever breaks that property.
- `materialize_gpt_params`: a meta-device GPT (or a pipeline stage of one) given real storage holding this rank's
  part (training/trainer.py for TP, parallel/pipeline.py per stage).
- `init_flat_part`: ZeRO-3, whose ranks each hold one range of every flattened parameter (parallel/engine.py).
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import torch
from torch import nn

from ..config.model import ModelConfig
from ..model.init import init_rule, initial_value, module_seeds

PIECE_ELEMENTS = 1 << 24  # elements per piece of a chunked draw (64 MB in fp32)


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


def draw_part(module: nn.Module, pname: str, std: float, seed: int, dtype: torch.dtype, device,
              empty=None) -> torch.Tensor:
    """This rank's part of `module.<pname>` (a layer of parallel/layers.py: `full_param_shape`, `shard_param`)
    drawn as the single-process weight: normal(0, std) at the full shape from a generator seeded with `seed`.
    Piece by piece (`draw_narrow`, peak: one piece) when the part is one narrow of the whole and on CPU; otherwise
    the whole weight is drawn into `empty(shape, dtype)` (default: a new tensor on `device`) and the part is a
    view of it."""
    device = torch.device(device)
    shape = module.full_param_shape(pname)
    spec = narrow_spec(module, pname, shape)
    if spec is not None and device.type == "cpu" and math.prod(shape) >= 16 and chunked_draws_exact(dtype):
        return draw_narrow(shape, dtype, std, seed, *spec, empty=empty)
    g = torch.Generator().manual_seed(seed)
    full = empty(shape, dtype) if empty is not None else torch.empty(shape, dtype=dtype, device=device)
    return module.shard_param(pname, full.normal_(0.0, std, generator=g))


@torch.no_grad()
def init_flat_part(name: str, module: nn.Module, cfg: ModelConfig, seed: Optional[int], pname: str,
                   shape: torch.Size, start: int, out: torch.Tensor) -> bool:
    """Write elements [start, start + out.numel()) of the flattened single-process initial value of
    `module.<pname>` (full shape `shape`) into `out` (1-D, CPU); False if the rules leave the parameter alone. For
    ZeRO-3, whose ranks each hold one such range of every parameter: a random weight is drawn in pieces straight
    into `out` (peak: one piece), so no rank ever holds the whole weight (when the self-check of
    `chunked_draws_exact` fails, the weight is drawn whole instead)."""
    rule = init_rule(name, module, cfg, pname)
    if rule is None:
        return False
    kind, value = rule
    if kind == "fill":
        out.fill_(value)
        return True
    if seed is None:
        raise KeyError(f"no init seed for module '{name}': seeds come from module_seeds() of the whole GPT")
    numel, length = math.prod(shape), out.numel()
    if numel >= 16 and chunked_draws_exact(out.dtype):
        draw_narrow((numel,), out.dtype, value, seed, 0, start, length, out=out)
    else:
        g = torch.Generator().manual_seed(seed)
        out.copy_(torch.empty(numel, dtype=out.dtype).normal_(0.0, value, generator=g)[start:start + length])
    return True


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
            value = initial_value(name, module, cfg, seeds.get(name), pname, p, device, scratch)
            if value is None:
                raise ValueError(f"'{name}.{pname}' has no init rule: cannot materialise it from the seed")
            data = value.clone() if value._base is not None else value  # out of the scratch buffer
            new = nn.Parameter(data, requires_grad=p.requires_grad)
            new.__dict__.update(p.__dict__)  # tensor_model_parallel, partition_dim, ...
            module._parameters[pname] = new
            created += new.numel()
    return created



def materialize_from_seed(model: nn.Module, cfg: ModelConfig, seed: int) -> int:
    """`materialize_gpt_params` of a whole (meta, possibly TP-sharded) GPT with the module seeds a single-process
    build draws from the job seed."""
    return materialize_gpt_params(model, cfg, module_seeds(model, torch.Generator().manual_seed(seed)))
