"""Tensor / pipeline / data parallel process groups, passed explicitly, plus the `mpu` DeepSpeed expects.

Rank layout is DeepSpeed's `PipeModelDataParallelTopology`: axes (pipe, data, model) in row-major order, so

    global_rank = pp_rank * (dp * tp) + dp_rank * tp + tp_rank

TP ranks are adjacent (TP traffic is the heaviest and should stay inside a node), then data, then pipeline
stages. Because the order is the same, our groups and the grid DeepSpeed's pipeline engine builds from the same
topology contain the same ranks, so tensor-parallel layers using our TP group compose with `PipelineModule`.

Nothing here is global: build one `ParallelGroups` per job and pass it (or its `mpu`) to whoever needs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch.distributed as dist

from ..errors import UserError


class ParallelLayoutError(UserError, ValueError):
    """TP x PP x DP does not match the number of processes (or a size is not positive)."""


@dataclass(frozen=True)
class RankGrid:
    """Pure rank arithmetic of the (pipe, data, model) layout; no process groups (usable anywhere, e.g. tools)."""

    tp: int
    pp: int
    dp: int

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.dp

    def rank(self, pp_rank: int, dp_rank: int, tp_rank: int) -> int:
        return (pp_rank * self.dp + dp_rank) * self.tp + tp_rank

    def coords(self, rank: int) -> tuple[int, int, int]:
        """(pp_rank, dp_rank, tp_rank) of a global rank."""
        return rank // (self.dp * self.tp), (rank // self.tp) % self.dp, rank % self.tp

    def tp_groups(self) -> list[list[int]]:
        return [[self.rank(p, d, t) for t in range(self.tp)] for p in range(self.pp) for d in range(self.dp)]

    def dp_groups(self) -> list[list[int]]:
        return [[self.rank(p, d, t) for d in range(self.dp)] for p in range(self.pp) for t in range(self.tp)]

    def pp_groups(self) -> list[list[int]]:
        return [[self.rank(p, d, t) for p in range(self.pp)] for d in range(self.dp) for t in range(self.tp)]

    def mp_groups(self) -> list[list[int]]:
        """Model-parallel groups (TP x PP, fixed data index): DeepSpeed reduces grad norms / overflow over these."""
        return [sorted(self.rank(p, d, t) for p in range(self.pp) for t in range(self.tp)) for d in range(self.dp)]


def _check_positive(tp: int, pp: int) -> None:
    for name, v in (("tensor parallel size", tp), ("pipeline parallel size", pp)):
        if not isinstance(v, int) or v < 1:
            raise ParallelLayoutError(f"{name} must be a positive integer, got {v!r}")


def resolve_layout(world_size: int, tp: int = 1, pp: int = 1, dp: Optional[int] = None) -> RankGrid:
    """Check TP x PP x DP against the world size (DP inferred when None) and return the grid, or raise clearly."""
    _check_positive(tp, pp)
    if dp is None:
        if world_size % (tp * pp) != 0:
            raise ParallelLayoutError(
                f"world size {world_size} is not divisible by tensor parallel ({tp}) x pipeline parallel ({pp}) "
                f"= {tp * pp}: launch a multiple of {tp * pp} processes or change "
                f"--tensor-model-parallel-size / --pipeline-model-parallel-size")
        dp = world_size // (tp * pp)
    if dp < 1 or tp * pp * dp != world_size:
        raise ParallelLayoutError(
            f"tensor ({tp}) x pipeline ({pp}) x data ({dp}) parallel = {tp * pp * dp} does not equal the world "
            f"size {world_size}: launch {tp * pp * dp} processes or change the parallel sizes")
    return RankGrid(tp=tp, pp=pp, dp=dp)


@dataclass
class ParallelGroups:
    """This rank's position in the TP x PP x DP layout and the process groups it belongs to.

    `tp_group`, `pp_group`, `dp_group`, `mp_group` are torch.distributed groups, or None when running without a
    process group (world size 1). Every collective in `parallel/` takes a group and short-circuits on size 1,
    so a model converted with world size 1 runs without torch.distributed.
    """

    grid: RankGrid
    rank: int = 0
    tp_group: Any = None
    pp_group: Any = None
    dp_group: Any = None
    mp_group: Any = None
    tp_ranks: list[int] = field(default_factory=lambda: [0])
    pp_ranks: list[int] = field(default_factory=lambda: [0])
    dp_ranks: list[int] = field(default_factory=lambda: [0])
    mp_ranks: list[int] = field(default_factory=lambda: [0])

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, tp: int = 1, pp: int = 1, dp: Optional[int] = None) -> "ParallelGroups":
        """Create the groups. Collective: every process of the job must call it with the same sizes.

        Without an initialized process group the world is this single process (all sizes must be 1).
        """
        if not dist.is_available() or not dist.is_initialized():
            if tp * pp * (dp or 1) != 1:
                _check_positive(tp, pp)
                raise ParallelLayoutError(
                    f"tensor ({tp}) x pipeline ({pp}) parallelism needs {tp * pp * (dp or 1)} processes but "
                    f"torch.distributed is not initialized (one process): launch with deepspeed, torchrun or srun")
            return cls(grid=resolve_layout(1, tp, pp, dp))
        world, rank = dist.get_world_size(), dist.get_rank()
        grid = resolve_layout(world, tp, pp, dp)
        mine: dict[str, tuple[list[int], Any]] = {}
        # new_group is collective over the whole world: every rank creates every group, in the same order.
        for kind, lists in (("tp", grid.tp_groups()), ("dp", grid.dp_groups()), ("pp", grid.pp_groups()),
                            ("mp", grid.mp_groups())):
            for ranks in lists:
                g = dist.new_group(ranks=ranks)
                if rank in ranks:
                    mine[kind] = (ranks, g)
        return cls(grid=grid, rank=rank,
                   tp_ranks=mine["tp"][0], tp_group=mine["tp"][1], dp_ranks=mine["dp"][0], dp_group=mine["dp"][1],
                   pp_ranks=mine["pp"][0], pp_group=mine["pp"][1], mp_ranks=mine["mp"][0], mp_group=mine["mp"][1])

    @classmethod
    def virtual(cls, tp: int = 1, pp: int = 1, dp: int = 1, rank: int = 0) -> "ParallelGroups":
        """The view of global `rank` in a TP x PP x DP layout, without processes: groups are `VirtualGroup`s that
        only know their size and this rank's position (plan / count / reshard a meta-device model for a layout
        this machine cannot launch). Running collectives on them raises."""
        from .mappings import VirtualGroup

        grid = resolve_layout(tp * pp * dp, tp, pp, dp)
        if not 0 <= rank < grid.world_size:
            raise ParallelLayoutError(f"rank {rank} is outside the world of {grid.world_size} processes")
        found = {}
        for kind, lists in (("tp", grid.tp_groups()), ("dp", grid.dp_groups()), ("pp", grid.pp_groups()),
                            ("mp", grid.mp_groups())):
            ranks = next(r for r in lists if rank in r)
            found[kind] = (ranks, VirtualGroup(len(ranks), ranks.index(rank)))
        return cls(grid=grid, rank=rank, tp_ranks=found["tp"][0], tp_group=found["tp"][1],
                   dp_ranks=found["dp"][0], dp_group=found["dp"][1], pp_ranks=found["pp"][0],
                   pp_group=found["pp"][1], mp_ranks=found["mp"][0], mp_group=found["mp"][1])

    # ------------------------------------------------------------------ sizes and ranks
    @property
    def world_size(self) -> int:
        return self.grid.world_size

    @property
    def tp_size(self) -> int:
        return self.grid.tp

    @property
    def pp_size(self) -> int:
        return self.grid.pp

    @property
    def dp_size(self) -> int:
        return self.grid.dp

    @property
    def tp_rank(self) -> int:
        return self.grid.coords(self.rank)[2]

    @property
    def dp_rank(self) -> int:
        return self.grid.coords(self.rank)[1]

    @property
    def pp_rank(self) -> int:
        return self.grid.coords(self.rank)[0]

    @property
    def tp_src_rank(self) -> int:
        """Global rank of TP rank 0 in this rank's TP group (the one that broadcasts inputs/data)."""
        return self.tp_ranks[0]

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    def topology(self):
        """The equivalent DeepSpeed `PipeModelDataParallelTopology` (for `PipelineModule(topology=...)`)."""
        from .deepspeed_compat import pipe_topology

        return pipe_topology(self.pp_size, self.tp_size, self.dp_size)

    @property
    def mpu(self) -> "DeepSpeedMPU":
        """The object to pass as `deepspeed.initialize(..., mpu=groups.mpu)`."""
        return DeepSpeedMPU(self)

    def __repr__(self) -> str:
        return (f"ParallelGroups(rank={self.rank}, tp={self.tp_rank}/{self.tp_size}, pp={self.pp_rank}/"
                f"{self.pp_size}, dp={self.dp_rank}/{self.dp_size})")


class DeepSpeedMPU:
    """Megatron-style `mpu` adapter over `ParallelGroups`, with the method names DeepSpeed 0.19 calls.

    Semantics follow DeepSpeed's own `PipelineParallelGrid` so both are interchangeable:
    - "model parallel" = all TP x PP ranks sharing one data-parallel index (grad-norm / overflow reductions;
      checkpoint `mp_rank_XX` naming, which equals the TP rank when PP = 1);
    - "tensor model parallel" / "slice parallel" = the TP group (DeepSpeed counts replicated parameters' grad
      norms on TP rank 0 only; sharded ones carry `param.tensor_model_parallel = True`);
    - "pipe parallel" / "pipeline model parallel" = the PP group.
    Deliberately absent: `get_sequence_parallel_*` and `initialize_sequence_parallel`, which DeepSpeed reads as
    Ulysses sequence parallelism (a different scheme); Megatron sequence parallelism lives inside the TP group.
    """

    def __init__(self, groups: ParallelGroups):
        self.groups = groups

    # data parallel
    def get_data_parallel_rank(self) -> int:
        return self.groups.dp_rank

    def get_data_parallel_world_size(self) -> int:
        return self.groups.dp_size

    def get_data_parallel_group(self):
        return self.groups.dp_group

    def get_data_parallel_group_ranks(self) -> list[int]:
        return list(self.groups.dp_ranks)

    # model parallel = TP x PP
    def get_model_parallel_rank(self) -> int:
        return self.groups.mp_ranks.index(self.groups.rank)

    def get_model_parallel_world_size(self) -> int:
        return self.groups.tp_size * self.groups.pp_size

    def get_model_parallel_group(self):
        return self.groups.mp_group

    # tensor (slice) parallel
    def get_tensor_model_parallel_rank(self) -> int:
        return self.groups.tp_rank

    def get_tensor_model_parallel_world_size(self) -> int:
        return self.groups.tp_size

    def get_tensor_model_parallel_group(self):
        return self.groups.tp_group

    def get_tensor_model_parallel_src_rank(self) -> int:
        return self.groups.tp_src_rank

    get_slice_parallel_rank = get_tensor_model_parallel_rank
    get_slice_parallel_world_size = get_tensor_model_parallel_world_size
    get_slice_parallel_group = get_tensor_model_parallel_group

    # pipeline parallel
    def get_pipe_parallel_rank(self) -> int:
        return self.groups.pp_rank

    def get_pipe_parallel_world_size(self) -> int:
        return self.groups.pp_size

    def get_pipe_parallel_group(self):
        return self.groups.pp_group

    get_pipeline_model_parallel_rank = get_pipe_parallel_rank
    get_pipeline_model_parallel_world_size = get_pipe_parallel_world_size
    get_pipeline_model_parallel_group = get_pipe_parallel_group

    def get_global_rank(self) -> int:
        return self.groups.rank
