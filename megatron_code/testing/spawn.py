"""The one multi-process test helper: run a function on N spawned CPU processes joined in a gloo group.

Contract of `run_distributed(fn, world_size, *args, timeout=..., **kwargs)`:
- `fn(rank, world_size, *args, **kwargs)` runs in `world_size` fresh processes started by torch.multiprocessing
  ("forkserver" with torch preloaded, see `_context`; "spawn" where forkserver is unavailable), each already
  inside `torch.distributed.init_process_group(backend, init_method="file://...")` with a rendezvous file in a
  private temporary directory; `fn` and its arguments must be picklable (a module-level function in a test
  file is). Children see the caller's current sys.path, working directory and environment variables.
- Returns the list of `fn`'s return values indexed by rank (they must be picklable).
- If any rank raises, the parent raises `DistributedTestError` whose message contains that rank's
  traceback; the other ranks are killed (they would otherwise hang in a collective).
- If the ranks do not all finish within `timeout` seconds, the processes are killed and `DistributedTestError`
  names the ranks that were still running.
- Teardown is in `finally`: the child destroys its process group, the parent kills leftovers and removes the
  temporary directory.
Children run with one intra-op thread each so N ranks on a small CPU do not oversubscribe it, and see
RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE as under torchrun (DeepSpeed's engine requires them).
"""

from __future__ import annotations

import os
import pickle
import queue as queue_mod
import shutil
import tempfile
import time
import traceback
from typing import Any, Callable

import torch.multiprocessing as mp

from .ports import free_port


class DistributedTestError(RuntimeError):
    """A spawned rank failed or the group timed out; the message carries the child's traceback."""


def _child(rank: int, world_size: int, init_file: str, backend: str, fn: Callable, args: tuple,
           kwargs: dict, results: Any, timeout: float, environ: dict) -> None:
    import datetime

    import torch
    import torch.distributed as dist

    # A forkserver child inherits the server's environment from when it started, not the caller's current one
    # (multiprocessing forwards sys.path and cwd, not os.environ): restore the caller's.
    os.environ.clear()
    os.environ.update(environ)
    torch.set_num_threads(1)
    # Ranks meet through the rendezvous file. The launcher variables are set as torchrun would (single node)
    # because DeepSpeed's engine asserts them; MASTER_PORT is a port free at launch, unique per call, because
    # some code keys shared resources on MASTER_ADDR/PORT (DeepSpeed's CPU shared-memory all-reduce names its
    # segments after them) and concurrent test runs must not collide.
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world_size), OMP_NUM_THREADS="1")
    try:
        dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=max(timeout, 10)))
        out = fn(rank, world_size, *args, **kwargs)
        # Plain pickle, by value: the queue's own pickler would hand tensors over as shared-memory handles that
        # the parent can only open while this process lives (a rank that returns and exits first left the
        # parent with "connection reset"). Pickling here also surfaces an unpicklable result with its cause,
        # where the queue's background thread would fail silently.
        try:
            payload = pickle.dumps(out)
        except Exception as exc:  # noqa: BLE001
            raise TypeError(f"{fn.__name__} returned a value that cannot be pickled back to the parent: {exc}")
        results.put((rank, "ok", payload))
    except BaseException:  # noqa: BLE001 - every failure must reach the parent with its traceback
        results.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001 - a peer may already be gone; nothing left to clean
                pass


def _context():
    """A "forkserver" context whose server has imported torch once: each rank then starts in ~0.1 s instead of
    paying torch's import (seconds on a loaded 2-core machine) per rank per test. The server is a fresh process
    (not a fork of the test runner), so children start clean like "spawn". MC_SPAWN_METHOD=spawn forces spawn."""
    method = os.environ.get("MC_SPAWN_METHOD", "forkserver")
    if method not in mp.get_all_start_methods():
        method = "spawn"
    ctx = mp.get_context(method)
    if method == "forkserver":
        # torch._dynamo is imported lazily by the first optimizer step (seconds) and deepspeed by most
        # distributed tests (seconds more): preload them once here. Missing modules are skipped by the server.
        # testing.warm switches off the DeepSpeed op that ranks would otherwise JIT-build (see its docstring).
        ctx.set_forkserver_preload(["torch", "torch.distributed", "torch._dynamo", "torch.testing", "deepspeed",
                                    "deepspeed.comm", "megatron_code.testing.spawn", "megatron_code.testing.warm"])
    return ctx


def run_distributed(fn: Callable, world_size: int, *args: Any, timeout: float = 120.0, backend: str = "gloo",
                    **kwargs: Any) -> list:
    """Run `fn(rank, world_size, *args, **kwargs)` on `world_size` gloo processes; return results by rank."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    ctx = _context()
    tmpdir = tempfile.mkdtemp(prefix="mc_dist_")
    environ = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    init_file = os.path.join(tmpdir, "rendezvous")
    results = ctx.Queue()
    procs = []
    try:
        for rank in range(world_size):
            p = ctx.Process(target=_child, args=(rank, world_size, init_file, backend, fn, args, kwargs, results,
                                                 timeout, environ), daemon=True)
            p.start()
            procs.append(p)
        outputs: dict[int, Any] = {}
        deadline = time.monotonic() + timeout
        while len(outputs) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(set(range(world_size)) - set(outputs))
                raise DistributedTestError(f"timeout after {timeout:.0f}s: ranks {missing} did not finish "
                                           f"(a collective mismatch or a hang)")
            try:
                rank, status, payload = results.get(timeout=min(remaining, 1.0))
            except queue_mod.Empty:
                dead = [r for r, p in enumerate(procs) if r not in outputs and p.exitcode not in (None, 0)]
                if dead:
                    # A child that died without reporting (segfault, OOM kill): give its queue a moment to drain.
                    time.sleep(0.5)
                    if results.empty():
                        codes = {r: procs[r].exitcode for r in dead}
                        raise DistributedTestError(f"ranks died without reporting, exit codes {codes}")
                continue
            if status == "error":
                raise DistributedTestError(f"rank {rank} of {world_size} raised:\n{payload}")
            outputs[rank] = pickle.loads(payload)
        for p in procs:
            p.join(timeout=10)
        return [outputs[r] for r in range(world_size)]
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join(timeout=5)
        results.close()
        shutil.rmtree(tmpdir, ignore_errors=True)
