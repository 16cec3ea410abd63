#!/usr/bin/env python
"""CPU time of a command's whole process tree, orphans included: `python tools/ci/cpu_time.py CMD ARGS...`.

`/usr/bin/time` and the shell's `times` count only descendants that were reaped up the chain. The ranks of
`megatron_code.testing.run_distributed` are children of a multiprocessing forkserver that nobody waits for, so
their CPU is missing there. This runs CMD as a child subreaper (Linux `prctl(PR_SET_CHILD_SUBREAPER)`): orphaned
descendants are re-parented to it and reaped, and their CPU lands in its children's times. Prints one line to
stderr, `cpu_time: user U sys S wall W`, and exits with CMD's status. See docs/testing.md, "Measuring a test's
cost"."""

import ctypes
import os
import sys
import time

PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.splitlines()[0], file=sys.stderr)
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print("error: prctl(PR_SET_CHILD_SUBREAPER) failed: this needs Linux", file=sys.stderr)
        return 2
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(argv[0], argv)
        except OSError as exc:
            print(f"error: cannot run {argv[0]}: {exc}", file=sys.stderr)
            os._exit(127)
    code = 1
    while True:  # reap CMD and every orphan re-parented to us until none is left
        try:
            child, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except KeyboardInterrupt:
            continue  # the interrupt reached CMD too (same process group); keep reaping
        if child == pid:
            code = os.waitstatus_to_exitcode(status)
    t = os.times()
    print(f"cpu_time: user {t.children_user:.2f} sys {t.children_system:.2f} wall {time.monotonic() - start:.1f}",
          file=sys.stderr)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
