"""Tensor-parallel layers (Megatron-LM, Shoeybi et al., 2019): column/row-parallel linears, a replicated-KV linear
for MQA/GQA with fewer KV heads than TP ranks, a vocab-parallel embedding and the single parallel-block reduction.

All are drop-in replacements for the model's nn.Linear / nn.Embedding (they subclass them, keep the parameter
names `weight`/`bias`, and `in_features`/`out_features`/`num_embeddings` are the LOCAL sizes), so state-dict keys,
the model's `init_weights()` and `nn.Linear` checks keep working. `from_dense(module, group, ...)` builds one from
an unsharded module by copying this rank's slice (also on the meta device: shapes only). Every layer states how it
shards (`full_param_shape(name)`, `shard_param(name, full)`): the one place a full tensor is cut into this rank's
part, used by `from_dense` and by the model's init (`draw_normal`: the full weight's draw, this rank's part).

Sharded parameters carry `tensor_model_parallel = True` and `partition_dim` (what DeepSpeed reads to count their
gradient norms on every TP rank instead of TP rank 0 only); replicated ones keep identical values on all TP
ranks because their gradients are identical (or explicitly all-reduced) on all of them.

Activations are (B, T, H). Unless a layer is told its input was already brought into the TP region
(`copy_input=False`, what the plans do: one region entry per norm output instead of one per projection), a
column-parallel layer applies the region entry itself: `copy_to_tp` (identity fwd, all-reduce bwd), or under
sequence parallelism an all-gather along T (reduce-scatter bwd).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..kernels.linear_cross_entropy import VocabShard
from . import mappings as M

ROW_REDUCTIONS = ("all_reduce", "reduce_scatter", "none")


class GroupRef:
    """Holds a process group so modules that keep one can still be deep-copied (ProcessGroup objects cannot be
    copied or pickled; a copy of a model must talk over the same group anyway)."""

    __slots__ = ("group",)

    def __init__(self, group):
        self.group = group

    def __deepcopy__(self, memo):
        return self

    def __copy__(self):
        return self


class _GroupAttr:
    """Mixin: `self.group` is stored through a GroupRef (deepcopy-safe)."""

    @property
    def group(self):
        return self.__dict__["_group_ref"].group

    @group.setter
    def group(self, value):
        self.__dict__["_group_ref"] = GroupRef(value)


class ShardingError(UserError, ValueError):
    """A dimension does not divide by the tensor-parallel size; the message names the config knob to change."""


def shard_range(total: int, group, what: str) -> tuple[int, int]:
    """[start, stop) of this rank's equal shard of `total` rows."""
    n, r = M.group_size(group), M.group_rank(group)
    if total % n != 0:
        raise ShardingError(f"{what} ({total}) is not divisible by the tensor parallel size ({n}): choose a TP "
                            f"size that divides it or change the model size")
    per = total // n
    return r * per, (r + 1) * per


def _mark(param: nn.Parameter, dim: int) -> None:
    param.tensor_model_parallel = True
    param.partition_dim = dim
    param.partition_stride = 1


class _ShardedParams:
    """Mixin: how this layer's parameters relate to the unsharded layer's. `_shards` maps a parameter name to
    (dim, start, full size) for split parameters; parameters it does not name are whole on every TP rank."""

    _shards: dict = {}

    def full_param_shape(self, name: str) -> torch.Size:
        """Shape of parameter `name` in the unsharded model (e.g. (out, in) for a column-parallel weight)."""
        shape = list(getattr(self, name).shape)
        if name in self._shards:
            dim, _, full = self._shards[name]
            shape[dim] = full
        return torch.Size(shape)

    def shard_param(self, name: str, full: torch.Tensor) -> torch.Tensor:
        """This rank's part of `full` (shaped `full_param_shape(name)`) for parameter `name`: a view, no copy."""
        if name not in self._shards:
            return full
        dim, start, _ = self._shards[name]
        return full.narrow(dim, start, getattr(self, name).shape[dim])

    def draw_normal(self, name: str, std: float, seed: int, dtype: torch.dtype, device, empty=None) -> torch.Tensor:
        """This rank's part of the single-process normal(0, std) weight drawn from `seed` (what model/init asks
        of a module holding part of a larger weight): parallel/sharded_init.draw_part."""
        from .sharded_init import draw_part
        return draw_part(self, name, std, seed, dtype, device, empty)


class _FromDenseLinear(_ShardedParams):
    """Mixin for the parallel Linear layers: built from a dense nn.Linear, holding this rank's part of it."""

    @classmethod
    def from_dense(cls, linear: nn.Linear, group, **kw):
        w = linear.weight
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, group,
                    device=w.device, dtype=w.dtype, **kw)
        _copy_param(layer.weight, layer.shard_param("weight", w))
        if linear.bias is not None:
            _copy_param(layer.bias, layer.shard_param("bias", linear.bias))
        return layer


def _copy_param(dst: nn.Parameter, src: torch.Tensor) -> None:
    if dst.device.type == "meta" or src.device.type == "meta":
        return
    with torch.no_grad():
        dst.copy_(src)


def vocab_shard(group, start: int) -> VocabShard | None:
    """For the fused head + loss kernel: this rank's head rows start at `start`; reductions run over `group`."""
    if M.group_size(group) == 1:
        return None
    ops = {"max": dist.ReduceOp.MAX, "sum": dist.ReduceOp.SUM}
    return VocabShard(start, lambda t, op: M.all_reduce(t, group, op=ops[op]))


def region_entry(x: torch.Tensor, group, sequence_parallel: bool) -> torch.Tensor:
    """Bring a replicated (or, under SP, sequence-sharded) activation into a tensor-parallel region."""
    return M.gather_from_sequence(x, group) if sequence_parallel else M.copy_to_tp(x, group)


class _AddBiasFirstRank(torch.autograd.Function):
    """y + bias on TP rank 0 only, BEFORE the partial sums are reduced, so the bias is counted once.

    Backward gives the bias its full gradient on every rank: the gradient reaching the partial sum is the same
    on all ranks (the backward of all-reduce is the identity; of reduce-scatter an all-gather), so every rank
    computes the true sum over tokens and the replicated bias stays identical across TP ranks."""

    @staticmethod
    def forward(ctx, y, bias, first):
        return y + bias if first else y.clone()

    @staticmethod
    def backward(ctx, g):
        return g, g.reshape(-1, g.shape[-1]).sum(0), None


class ColumnParallelLinear(_FromDenseLinear, _GroupAttr, nn.Linear):
    """y_local = x W_r^T + b_r, W split along its output rows: (out/tp, in). Output stays sharded on its last dim
    (e.g. this rank's heads, FFN columns or vocabulary slice) unless `gather_output`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, group=None, *,
                 gather_output: bool = False, copy_input: bool = True, sequence_parallel: bool = False,
                 device=None, dtype=None):
        start, stop = shard_range(out_features, group, "output features")
        nn.Module.__init__(self)
        self.in_features, self.out_features = in_features, stop - start
        self.full_out_features, self.shard_start = out_features, start
        self.group, self.gather_output, self.copy_input = group, gather_output, copy_input
        self.sequence_parallel = sequence_parallel
        self._shards = {"weight": (0, start, out_features), "bias": (0, start, out_features)}
        self.weight = nn.Parameter(torch.empty(stop - start, in_features, device=device, dtype=dtype))
        _mark(self.weight, 0)
        if bias:
            self.bias = nn.Parameter(torch.empty(stop - start, device=device, dtype=dtype))
            _mark(self.bias, 0)
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.copy_input:
            x = region_entry(x, self.group, self.sequence_parallel)
        y = F.linear(x, self.weight, self.bias)  # (B, T, out/tp)
        return M.gather_from_tp(y, self.group) if self.gather_output else y

    def vocab_shard(self) -> VocabShard | None:
        """As an LM head: the output rows are this rank's vocabulary slice (the fused head + loss reads this)."""
        return vocab_shard(self.group, self.shard_start)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, full_out={self.full_out_features}, tp_shard_start={self.shard_start}"


class RowParallelLinear(_FromDenseLinear, _GroupAttr, nn.Linear):
    """y = sum_r x_r W_r^T + b, W split along its input columns: (out, in/tp).

    reduce: "all_reduce" (plain TP), "reduce_scatter" (sequence parallel: output sharded along T) or "none"
    (the parallel block: attention and MLP partial sums are added first, then reduced once by `TPReduce`).
    The bias is replicated and added on TP rank 0 before the reduction (see _AddBiasFirstRank)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, group=None, *,
                 reduce: str = "all_reduce", input_is_parallel: bool = True, device=None, dtype=None):
        if reduce not in ROW_REDUCTIONS:
            raise ValueError(f"reduce must be one of {ROW_REDUCTIONS}, got '{reduce}'")
        start, stop = shard_range(in_features, group, "input features")
        nn.Module.__init__(self)
        self.in_features, self.out_features = stop - start, out_features
        self.full_in_features, self.shard_start = in_features, start
        self.group, self.reduce, self.input_is_parallel = group, reduce, input_is_parallel
        self._shards = {"weight": (1, start, in_features)}  # the bias is replicated
        self.weight = nn.Parameter(torch.empty(out_features, stop - start, device=device, dtype=dtype))
        _mark(self.weight, 1)
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.input_is_parallel:
            x = M.scatter_to_tp(x, self.group)
        y = F.linear(x, self.weight)  # (B, T, out): this rank's partial sum
        if self.bias is not None:
            if M.group_size(self.group) == 1:
                y = y + self.bias
            else:
                y = _AddBiasFirstRank.apply(y, self.bias, M.group_rank(self.group) == 0)
        if self.reduce == "all_reduce":
            return M.reduce_from_tp(y, self.group)
        if self.reduce == "reduce_scatter":
            return M.reduce_scatter_to_sequence(y, self.group)
        return y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, full_in={self.full_in_features}, reduce={self.reduce}"


class ReplicatedKVLinear(_ShardedParams, _GroupAttr, nn.Linear):
    """K or V projection when there are fewer KV heads than TP ranks (MQA as BigCode trained StarCoder, or GQA
    with kv_heads < tp). The full weight (kv_heads * head_dim, in) is replicated on every TP rank; the forward
    uses only the rows of the KV head this rank's query heads attend to (rank r: head r // (tp / kv_heads)), and
    the weight/bias gradients are all-reduced over TP in the backward (`reduce_grad`), so replicas stay equal.
    `out_features` is the LOCAL output size (head_dim * 1) so KV caches size themselves correctly."""

    def __init__(self, in_features: int, kv_heads: int, head_dim: int, bias: bool = True, group=None, *,
                 copy_input: bool = True, sequence_parallel: bool = False, device=None, dtype=None):
        n, r = M.group_size(group), M.group_rank(group)
        if kv_heads >= n or n % kv_heads != 0:
            raise ShardingError(f"replicated KV needs kv heads ({kv_heads}) < TP ({n}) with TP divisible by the kv "
                                f"heads; with kv heads divisible by TP the plan shards them column-wise instead")
        nn.Module.__init__(self)
        head = r // (n // kv_heads)
        self.rows = (head * head_dim, (head + 1) * head_dim)
        self.in_features, self.out_features = in_features, head_dim
        self.full_out_features = kv_heads * head_dim
        self.group, self.copy_input, self.sequence_parallel = group, copy_input, sequence_parallel
        self.weight = nn.Parameter(torch.empty(kv_heads * head_dim, in_features, device=device, dtype=dtype))
        if bias:
            self.bias = nn.Parameter(torch.empty(kv_heads * head_dim, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_dense(cls, linear: nn.Linear, group, *, kv_heads: int, head_dim: int, **kw) -> "ReplicatedKVLinear":
        w = linear.weight
        if linear.out_features != kv_heads * head_dim:
            raise ShardingError(f"projection has {linear.out_features} outputs, expected kv heads x head dim = "
                                f"{kv_heads} x {head_dim}")
        layer = cls(linear.in_features, kv_heads, head_dim, linear.bias is not None, group,
                    device=w.device, dtype=w.dtype, **kw)
        _copy_param(layer.weight, w)
        if linear.bias is not None:
            _copy_param(layer.bias, linear.bias)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.copy_input:
            x = region_entry(x, self.group, self.sequence_parallel)
        a, b = self.rows
        w = M.reduce_grad(self.weight, self.group)[a:b]  # (head_dim, in)
        bias = M.reduce_grad(self.bias, self.group)[a:b] if self.bias is not None else None
        return F.linear(x, w, bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, replicated full_out={self.full_out_features}, rows={self.rows}"


class _ShardedEmbedding(_ShardedParams, _GroupAttr, nn.Embedding):
    """An nn.Embedding (plain: no padding_idx/max_norm/sparse) whose weight is split over TP along `_split_dim`
    (0: rows, 1: columns); subclasses say which and how they look up."""

    _split_dim: int
    _what: str  # names the layer in from_dense's refusal

    def _init_table(self, rows: int, cols: int, start: int, full: int, group, device, dtype) -> None:
        nn.Module.__init__(self)
        self.num_embeddings, self.embedding_dim = rows, cols
        self.padding_idx, self.max_norm, self.norm_type = None, None, 2.0
        self.scale_grad_by_freq, self.sparse = False, False
        self.group = group
        self._shards = {"weight": (self._split_dim, start, full)}
        self.weight = nn.Parameter(torch.empty(rows, cols, device=device, dtype=dtype))
        _mark(self.weight, self._split_dim)

    @classmethod
    def from_dense(cls, emb: nn.Embedding, group):
        if emb.padding_idx is not None or emb.max_norm is not None or emb.sparse:
            raise ShardingError(f"{cls._what} supports plain embeddings only (no padding_idx/max_norm)")
        w = emb.weight
        layer = cls(emb.num_embeddings, emb.embedding_dim, group, device=w.device, dtype=w.dtype)
        _copy_param(layer.weight, layer.shard_param("weight", w))
        return layer


class VocabParallelEmbedding(_ShardedEmbedding):
    """Embedding whose vocabulary rows are split over TP: rank r holds ids [r*V/tp, (r+1)*V/tp). Tokens outside
    the local range look up zeros; the partial results are all-reduced (each token found on exactly one rank).
    Tied heads reuse `weight`, so F.linear(h, weight) yields this rank's vocabulary slice of the logits."""

    _split_dim, _what = 0, "vocab-parallel embedding"

    def __init__(self, num_embeddings: int, embedding_dim: int, group=None, *, device=None, dtype=None):
        start, stop = shard_range(num_embeddings, group, "padded vocabulary size (raise vocab_pad_multiple to a "
                                                         "multiple of TP)")
        self._init_table(stop - start, embedding_dim, start, num_embeddings, group, device, dtype)
        self.full_num_embeddings, self.vocab_start = num_embeddings, start

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if M.group_size(self.group) == 1:
            return F.embedding(ids, self.weight)
        local = ids - self.vocab_start
        outside = (local < 0) | (local >= self.num_embeddings)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)  # (B, T, H)
        out = out.masked_fill(outside.unsqueeze(-1), 0.0)
        return M.reduce_from_tp(out, self.group)

    def vocab_shard(self) -> VocabShard | None:
        """As a tied LM head (the fused head + loss reads this)."""
        return vocab_shard(self.group, self.vocab_start)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, full={self.full_num_embeddings}, " \
               f"vocab_start={self.vocab_start}"


class HeadParallelEmbedding(_ShardedEmbedding):
    """A table with one column per attention head (T5's relative position bias: buckets x heads) split over TP by
    heads: rank r holds the columns of the heads its column-parallel q/k/v produce ([r*H/tp, (r+1)*H/tp), the same
    contiguous blocks). Lookups are local, no collective; each column gets gradients only from its own head."""

    _split_dim, _what = 1, "head-parallel table"

    def __init__(self, num_embeddings: int, embedding_dim: int, group=None, *, device=None, dtype=None):
        start, stop = shard_range(embedding_dim, group, "number of attention heads")
        self._init_table(num_embeddings, stop - start, start, embedding_dim, group, device, dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class TPReduce(_GroupAttr, nn.Module):
    """Replaces the parallel block's `parallel_reduce` identity: the one reduction of attn + MLP partial sums
    (all-reduce; reduce-scatter along T under sequence parallelism)."""

    def __init__(self, group=None, sequence_parallel: bool = False):
        super().__init__()
        self.group, self.sequence_parallel = group, sequence_parallel

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.sequence_parallel:
            return M.reduce_scatter_to_sequence(h, self.group)
        return M.reduce_from_tp(h, self.group)

    def extra_repr(self) -> str:
        return f"sequence_parallel={self.sequence_parallel}"
