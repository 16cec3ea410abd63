"""Differentiable collectives that enter and leave tensor-parallel regions (Megatron's f / g operators).

Every function takes the process group explicitly. With a group of size 1 (or no torch.distributed at all,
group None) each one is the identity, so converted models also run as one process.

Pairs (forward / backward):
- copy_to_tp:            identity        / all-reduce     (input of column-parallel layers, "f")
- reduce_from_tp:        all-reduce      / identity       (output of row-parallel layers, "g")
- scatter_to_tp:         split last dim  / all-gather
- gather_from_tp:        all-gather last / split
- scatter_to_sequence:   split dim 1 (T) / all-gather T   (enter sequence parallelism)
- gather_from_sequence:  all-gather T    / reduce-scatter T (input of column-parallel layers under SP; pass
                         grad_is_partial=False when every rank's consumer is replicated -> backward is a split)
- reduce_scatter_to_sequence: reduce-scatter T / all-gather T (output of row-parallel layers under SP)
- reduce_grad:           identity        / all-reduce on a parameter (replicated weights whose per-rank
                         gradients are partial: KV replicated over TP, norm weights under SP)
Activations are (B, T, H): the sequence dimension is 1.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

SEQ_DIM = 1


class VirtualGroup:
    """A stand-in for a process group of `size` ranks seen from `rank`, with no processes behind it: enough to
    shard a (meta-device) model for rank `rank` of a layout this machine cannot launch (count a 540B model's
    per-rank parameters, compute resharding specs). Any collective on it raises."""

    def __init__(self, size: int, rank: int):
        if not 0 <= rank < size:
            raise ValueError(f"rank {rank} outside a group of size {size}")
        self.size, self.rank = size, rank

    def __repr__(self) -> str:
        return f"VirtualGroup(size={self.size}, rank={self.rank})"


def group_size(group) -> int:
    if isinstance(group, VirtualGroup):
        return group.size
    if group is None or not dist.is_available() or not dist.is_initialized():
        return 1
    return dist.get_world_size(group)


def group_rank(group) -> int:
    if isinstance(group, VirtualGroup):
        return group.rank
    if group is None or not dist.is_available() or not dist.is_initialized():
        return 0
    return dist.get_rank(group)


def _communicating(group) -> bool:
    """False when a collective over `group` is the identity (size 1); raises for virtual groups."""
    if group_size(group) == 1:
        return False
    if isinstance(group, VirtualGroup):
        raise RuntimeError(f"{group} is for planning (shapes, meta-device models) and cannot run collectives: "
                           f"build ParallelGroups.build(...) inside a launched job to run the model")
    return True


# ----------------------------------------------------------------------------- raw (non-autograd) collectives
def all_reduce(x: torch.Tensor, group, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """Out-of-place all-reduce (the input may be saved by autograd elsewhere)."""
    if not _communicating(group):
        return x
    out = x.contiguous().clone()
    dist.all_reduce(out, op=op, group=group)
    return out


def all_gather(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    if not _communicating(group):
        return x
    n = group_size(group)
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(n)]
    dist.all_gather(parts, x, group=group)
    return torch.cat(parts, dim=dim)


def split(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    """This rank's equal chunk of `x` along `dim` (the size must divide; the message names the dimension)."""
    n = group_size(group)
    if n == 1:
        return x
    if x.size(dim) % n != 0:
        raise ValueError(f"cannot split dimension {dim} of size {x.size(dim)} over {n} tensor-parallel ranks: "
                         f"it must be divisible (for sequence parallelism choose a sequence length divisible by TP)")
    return x.chunk(n, dim=dim)[group_rank(group)].contiguous()


def reduce_scatter(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    if not _communicating(group):
        return x
    n = group_size(group)
    if x.size(dim) % n != 0:
        raise ValueError(f"cannot reduce-scatter dimension {dim} of size {x.size(dim)} over {n} ranks: it must be "
                         f"divisible (for sequence parallelism choose a sequence length divisible by TP)")
    parts = [p.contiguous() for p in x.chunk(n, dim=dim)]
    out = torch.empty_like(parts[0])
    try:
        dist.reduce_scatter(out, parts, group=group)
    except (RuntimeError, NotImplementedError):
        # gloo before torch 2.x had no reduce_scatter (it fails before communicating): all-reduce, keep our chunk.
        return split(all_reduce(x, group), dim, group)
    return out


# ----------------------------------------------------------------------------- autograd wrappers
class _CopyToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return all_reduce(g, ctx.group), None


class _ReduceFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        return all_reduce(x, group)

    @staticmethod
    def backward(ctx, g):
        return g, None


class _ScatterToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim, group):
        ctx.dim, ctx.group = dim, group
        return split(x, dim, group)

    @staticmethod
    def backward(ctx, g):
        return all_gather(g, ctx.dim, ctx.group), None, None


class _GatherFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim, group, grad_is_partial):
        ctx.dim, ctx.group, ctx.partial = dim, group, grad_is_partial
        return all_gather(x, dim, group)

    @staticmethod
    def backward(ctx, g):
        if ctx.partial:
            return reduce_scatter(g, ctx.dim, ctx.group), None, None, None
        return split(g, ctx.dim, ctx.group), None, None, None


class _ReduceScatter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim, group):
        ctx.dim, ctx.group = dim, group
        return reduce_scatter(x, dim, group)

    @staticmethod
    def backward(ctx, g):
        return all_gather(g, ctx.dim, ctx.group), None, None


def copy_to_tp(x: torch.Tensor, group) -> torch.Tensor:
    if group_size(group) == 1:
        return x
    return _CopyToTP.apply(x, group)


def reduce_from_tp(x: torch.Tensor, group) -> torch.Tensor:
    if group_size(group) == 1:
        return x
    return _ReduceFromTP.apply(x, group)


def scatter_to_tp(x: torch.Tensor, group, dim: int = -1) -> torch.Tensor:
    if group_size(group) == 1:
        return x
    return _ScatterToTP.apply(x, dim, group)


def gather_from_tp(x: torch.Tensor, group, dim: int = -1) -> torch.Tensor:
    if group_size(group) == 1:
        return x
    return _GatherFromTP.apply(x, dim, group, False)


def scatter_to_sequence(x: torch.Tensor, group) -> torch.Tensor:
    return scatter_to_tp(x, group, dim=SEQ_DIM)


def gather_from_sequence(x: torch.Tensor, group, grad_is_partial: bool = True) -> torch.Tensor:
    if group_size(group) == 1:
        return x
    return _GatherFromTP.apply(x, SEQ_DIM, group, grad_is_partial)


def reduce_scatter_to_sequence(x: torch.Tensor, group) -> torch.Tensor:
    if group_size(group) == 1:
        return x
    return _ReduceScatter.apply(x, SEQ_DIM, group)


def reduce_grad(param: torch.Tensor, group) -> torch.Tensor:
    """Use inside forward as `F.linear(x, reduce_grad(self.weight, g))`: identity forward, the weight's gradient
    is summed over `group` in backward. Because it is part of the autograd graph (not a hook), it runs in the same
    order on every rank and composes with gradient accumulation, activation checkpointing and DeepSpeed."""
    return copy_to_tp(param, group)
