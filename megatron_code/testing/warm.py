"""Imported only by the test helper's forkserver (see spawn._context), never by ranks or the test runner:
settle once, before any rank is forked, what every rank would otherwise do for itself.

DeepSpeed's `init_distributed` on CPU would JIT-build its shared-memory communication op (taking a file lock in
~/.cache/torch_extensions that a killed rank leaves behind). The trainer switches that op off
(parallel/engine.keep_deepspeed_from_compiling); doing it here too covers test workers that call
`deepspeed.init_distributed` themselves: forked ranks inherit DeepSpeed's op table with the op marked off.
"""


def _settle_deepspeed_ops() -> None:
    try:
        from megatron_code.parallel.engine import keep_deepspeed_from_compiling

        keep_deepspeed_from_compiling()
    except ImportError:  # deepspeed missing: ranks will do without
        return


_settle_deepspeed_ops()
