"""Imported only by the test helper's forkserver (see spawn._context), never by ranks or the test runner:
load once, before any rank is forked, what every rank would otherwise load for itself.

DeepSpeed's `init_distributed` on CPU JIT-loads its shared-memory communication op through torch's extension
loader, which takes a file lock in ~/.cache/torch_extensions and runs ninja on every load. With N ranks per
test, and other test sessions doing the same, that is N lock round-trips per spawn, and a rank killed while
holding the lock (a timed-out test) leaves it behind, hanging every later load. Loaded here, the op sits in
DeepSpeed's in-process cache (OpBuilder._loaded_ops) and forked ranks never touch the lock.
"""

import os


def _warm_deepspeed_cpu_ops() -> None:
    import torch

    if torch.cuda.is_available():
        return  # never touch accelerators in a process that forks (CUDA cannot be forked)
    try:
        import deepspeed.comm  # noqa: F401
        import deepspeed.ops
        from deepspeed.accelerator import get_accelerator
        from torch.utils.cpp_extension import _get_build_directory
    except Exception:  # noqa: BLE001 - deepspeed missing or incompatible: ranks will do without
        return
    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return
    try:
        lock = os.path.join(_get_build_directory(builder.NAME, verbose=False), "lock")
        if os.path.exists(lock):
            return  # someone is building it, or a stale lock: do not hang the server on it
        builder.load(verbose=False)
    except Exception:  # noqa: BLE001 - no compiler etc.: each rank tries (and reports) itself
        return


_warm_deepspeed_cpu_ops()
