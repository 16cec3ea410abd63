"""Process groups: rank layout equals DeepSpeed's PipeModelDataParallelTopology, the mpu answers what DeepSpeed's
own PipelineParallelGrid answers, layout errors are clear; and the multi-process test helper itself."""

import copy
import time

import pytest
import torch

from megatron_code.parallel.groups import ParallelGroups, ParallelLayoutError, RankGrid, resolve_layout
from megatron_code.testing import DistributedTestError, run_distributed

LAYOUTS = [(1, 1, 1), (2, 1, 1), (2, 2, 2), (4, 2, 1), (1, 4, 2), (2, 1, 4), (8, 1, 1), (2, 3, 2)]


@pytest.mark.parametrize("tp,pp,dp", LAYOUTS)
def test_rank_grid_matches_deepspeed_topology(tp, pp, dp):
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

    topo = PipeModelDataParallelTopology(num_pp=pp, num_mp=tp, num_dp=dp)
    grid = RankGrid(tp=tp, pp=pp, dp=dp)
    assert sorted(grid.tp_groups()) == sorted(topo.get_axis_comm_lists("model") or [[r] for r in range(tp * pp * dp)])
    assert sorted(grid.dp_groups()) == sorted(topo.get_axis_comm_lists("data") or [[r] for r in range(tp * pp * dp)])
    assert sorted(grid.pp_groups()) == sorted(topo.get_axis_comm_lists("pipe") or [[r] for r in range(tp * pp * dp)])
    assert sorted(grid.mp_groups()) == sorted(sorted(topo.get_axis_list("data", d)) for d in range(dp))
    for rank in range(grid.world_size):
        c = topo.get_coord(rank)
        assert grid.coords(rank) == (c.pipe, c.data, c.model)
        assert grid.rank(c.pipe, c.data, c.model) == rank


def test_layout_errors_name_the_fix():
    with pytest.raises(ParallelLayoutError, match=r"world size 6 is not divisible by .* = 4"):
        resolve_layout(6, tp=2, pp=2)
    with pytest.raises(ParallelLayoutError, match="launch 8 processes"):
        resolve_layout(4, tp=2, pp=2, dp=2)
    with pytest.raises(ParallelLayoutError, match="positive integer"):
        resolve_layout(4, tp=0)
    assert resolve_layout(8, tp=2, pp=2) == RankGrid(2, 2, 2)


def _check_world_size_one_without_process_group():
    g = ParallelGroups.build()
    assert (g.tp_size, g.pp_size, g.dp_size, g.tp_rank, g.rank) == (1, 1, 1, 0, 0)
    assert g.tp_group is None and g.is_first_stage and g.is_last_stage
    mpu = g.mpu
    assert mpu.get_model_parallel_world_size() == 1 and mpu.get_model_parallel_rank() == 0
    assert mpu.get_data_parallel_group_ranks() == [0] and mpu.get_tensor_model_parallel_src_rank() == 0
    with pytest.raises(ParallelLayoutError, match="needs 2 processes .* not initialized"):
        ParallelGroups.build(tp=2)


def test_world_size_one_without_process_group():
    """Checked in a fresh interpreter: other tests in this pytest process may have left a world-1 group open."""
    import subprocess
    import sys
    code = ("import sys; sys.path.insert(0, 'tests/distributed'); import test_groups as t; "
            "t._check_world_size_one_without_process_group()")
    root = __file__.rsplit("/tests/", 1)[0]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


MPU_METHODS = ["get_data_parallel_rank", "get_data_parallel_world_size", "get_data_parallel_group_ranks",
               "get_model_parallel_rank", "get_model_parallel_world_size", "get_tensor_model_parallel_rank",
               "get_tensor_model_parallel_world_size", "get_slice_parallel_rank", "get_slice_parallel_world_size",
               "get_pipe_parallel_rank", "get_pipe_parallel_world_size", "get_pipeline_model_parallel_rank",
               "get_pipeline_model_parallel_world_size"]


def _groups_worker(rank, world):
    import torch.distributed as dist
    from deepspeed.runtime.pipe.topology import PipelineParallelGrid

    out = []
    for tp, pp in ((2, 2), (2, 1), (1, 2), (4, 1)):
        g = ParallelGroups.build(tp=tp, pp=pp)
        # Each group really contains the ranks it claims: all-reduce the global rank over it.
        for grp, ranks in ((g.tp_group, g.tp_ranks), (g.dp_group, g.dp_ranks), (g.pp_group, g.pp_ranks),
                           (g.mp_group, g.mp_ranks)):
            x = torch.tensor([float(rank)])
            dist.all_reduce(x, group=grp)
            assert x.item() == sum(ranks), (tp, pp, ranks)
        ds = PipelineParallelGrid(topology=g.topology())
        mine = {m: getattr(g.mpu, m)() for m in MPU_METHODS}
        theirs = {m: getattr(ds, m)() for m in MPU_METHODS}
        assert mine == theirs, (tp, pp, mine, theirs)
        assert dist.get_process_group_ranks(g.mpu.get_model_parallel_group()) == \
            dist.get_process_group_ranks(ds.get_model_parallel_group())
        assert g.mpu.get_tensor_model_parallel_src_rank() == g.tp_ranks[0]
        out.append((g.tp_rank, g.pp_rank, g.dp_rank))
    with pytest.raises(ParallelLayoutError, match="not divisible"):
        ParallelGroups.build(tp=3)
    check_deepspeed_grad_norm(ParallelGroups.build(tp=2))
    return out


def check_deepspeed_grad_norm(groups):
    """DeepSpeed's own gradient norm with our mpu on a TP2 x DP2 model (sharded parameters counted on every TP
    rank, replicated ones once) equals the single-process norm."""
    from deepspeed.runtime.utils import clip_grad_norm_

    from megatron_code.config.model import ModelConfig
    from megatron_code.model import GPT
    from megatron_code.parallel.plans import plan_for
    from megatron_code.parallel.tensor_parallel import apply_tensor_parallel
    from megatron_code.training.losses import causal_lm_loss

    cfg = ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, num_kv_heads=1, ffn_hidden_size=64,
                      vocab_size=50, vocab_pad_multiple=8, block="parallel", activation="swiglu",
                      tie_embeddings=False)
    torch.manual_seed(0)
    ref = GPT(cfg)
    ref.init_weights()
    model = apply_tensor_parallel(copy.deepcopy(ref), plan_for(cfg, groups.tp_size), groups)
    x = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(1))
    causal_lm_loss(ref(x), x, torch.ones(2, 8)).backward()
    causal_lm_loss(model(x), x, torch.ones(2, 8), groups.tp_group).backward()
    norm = clip_grad_norm_(list(model.parameters()), float("inf"), mpu=groups.mpu)
    ref_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in ref.parameters()]))
    torch.testing.assert_close(norm, ref_norm, rtol=1e-5, atol=1e-7)


@pytest.mark.distributed
def test_groups_and_mpu_match_deepspeed_grid():
    import deepspeed.comm  # noqa: F401 - DeepSpeed's grid calls deepspeed.comm, initialized below per rank

    results = run_distributed(_ds_wrapped, 4, timeout=120)
    assert results[3] == [(1, 1, 0), (1, 0, 1), (0, 1, 1), (3, 0, 0)]


def _ds_wrapped(rank, world):
    import deepspeed.comm as ds_dist

    ds_dist.init_distributed(dist_backend="gloo", auto_mpi_discovery=False, verbose=False)
    return _groups_worker(rank, world)


# ----------------------------------------------------------------------------- the spawn helper itself
def _returns_rank(rank, world, scale):
    import os

    import torch.distributed as dist

    x = torch.tensor([float(rank)])
    dist.all_reduce(x)
    return rank * scale, x.item(), world, os.environ.get("MC_TEST_MARKER"), os.getcwd()


def _raises_on_rank_one(rank, world):
    if rank == 1:
        raise KeyError("boom from rank one")
    import torch.distributed as dist

    dist.barrier()  # rank 0 would hang here forever: the helper must kill it


def _sleeps_on_rank_zero(rank, world):
    if rank == 0:
        time.sleep(60)
    return rank


@pytest.mark.distributed
def test_spawn_returns_results_by_rank(monkeypatch, tmp_path):
    run_distributed(_returns_rank, 1, 0)  # the (forkserver) helper has started before the environment changes
    monkeypatch.setenv("MC_TEST_MARKER", "set-after-start")
    monkeypatch.chdir(tmp_path)
    here = str(tmp_path)
    assert run_distributed(_returns_rank, 3, 10) == [(0, 3.0, 3, "set-after-start", here),
                                                     (10, 3.0, 3, "set-after-start", here),
                                                     (20, 3.0, 3, "set-after-start", here)]


@pytest.mark.distributed
def test_spawn_reraises_child_exception_with_traceback():
    start = time.monotonic()
    with pytest.raises(DistributedTestError) as info:
        run_distributed(_raises_on_rank_one, 2, timeout=60)
    msg = str(info.value)
    assert "rank 1 of 2 raised" in msg and "KeyError: 'boom from rank one'" in msg and "_raises_on_rank_one" in msg
    assert time.monotonic() - start < 30  # the hung rank 0 was killed, not waited for


def _returns_unpicklable(rank, world):
    return lambda: rank


@pytest.mark.distributed
def test_spawn_reports_unpicklable_results():
    with pytest.raises(DistributedTestError, match="cannot be pickled back to the parent"):
        run_distributed(_returns_unpicklable, 1, timeout=60)


@pytest.mark.distributed
def test_spawn_timeout_kills_hung_ranks():
    start = time.monotonic()
    with pytest.raises(DistributedTestError, match=r"timeout after 3s: ranks \[0\] did not finish"):
        run_distributed(_sleeps_on_rank_zero, 2, timeout=3)
    assert time.monotonic() - start < 20
