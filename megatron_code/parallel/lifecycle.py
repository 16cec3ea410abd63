"""Worker lifecycle: ranks that die with their launcher, and a heartbeat that names a silent rank.

- `die_with_launcher()`: under a launcher agent (torchrun, DeepSpeed's per-node launcher) each worker asks the
  kernel for SIGKILL when its parent dies (prctl PR_SET_PDEATHSIG), so killing the agent never leaves workers
  training unsupervised and writing into --save. Checkpoints are staged and renamed into place, so a kill at any
  moment leaves the last complete one intact. Not done for a plain `python pretrain_code.py`, whose parent is a
  shell a user may leave (nohup) while the run should go on.
- `Heartbeat`: a daemon thread per rank bumps a counter in the job's rendezvous store every `period` seconds and
  reads every other rank's. A rank whose counter has not moved for `silent_after` seconds (stopped, hung in the
  kernel, dead, or its host unreachable) is named on stderr and this rank exits at once (os._exit: the main thread
  is typically blocked in a collective with that rank and cannot be interrupted). The thread runs beside the main
  thread, so long legitimate work (an index build, a checkpoint write, evaluation) never looks silent: only a
  process that cannot run at all does. `silent_after` is half the process groups' timeout
  (--distributed-timeout-minutes), so every live rank leaves before its collectives would time out with a
  traceback. If the store itself stops answering (its host, global rank 0 unless torchrun's agent holds it, is the
  silent one), a watchdog notices that the heartbeat thread is stuck and says so.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

# Environment variables that only a launcher agent sets in its workers: torchrun (torch.distributed.elastic) and
# DeepSpeed's per-node launcher (deepspeed/launcher/launch.py exports the world info to its workers).
_AGENT_MARKERS = ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT")


def launched_by_agent(environ=None) -> bool:
    env = os.environ if environ is None else environ
    if any(k in env for k in _AGENT_MARKERS):
        return True
    try:  # DeepSpeed's launcher: the parent process runs deepspeed.launcher.launch
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            return b"deepspeed.launcher.launch" in f.read()
    except OSError:
        return False


def die_with_launcher(sig: int = signal.SIGKILL) -> bool:
    """Ask Linux to send `sig` to this process when its parent (the launcher agent) dies. Returns True if set."""
    if not sys.platform.startswith("linux") or not launched_by_agent():
        return False
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:  # the agent died before the request took effect: nothing would signal us
        os.kill(os.getpid(), sig)
    return True


class Heartbeat:
    """See the module docstring. `store`: a torch.distributed Store every rank shares (the default group's)."""

    KEY = "megatron_code/heartbeat/"

    def __init__(self, store, rank: int, world: int, silent_after: float, period: float | None = None,
                 exit_code: int = 1):
        self.store, self.rank, self.world = store, rank, world
        self.silent_after = float(silent_after)
        # Several beats per bound, so one late beat (a loaded machine) is never mistaken for silence.
        self.period = period if period is not None else max(0.05, min(5.0, self.silent_after / 10))
        self.exit_code = exit_code
        self._stop = threading.Event()
        self._last_poll = time.monotonic()
        self._threads: list[threading.Thread] = []

    def start(self) -> "Heartbeat":
        self.store.set(f"{self.KEY}host/{self.rank}", f"{socket.gethostname()} pid {os.getpid()}")
        for target, name in ((self._beat, "heartbeat"), (self._watch, "heartbeat-watchdog")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self, done: bool) -> None:
        """Stop beating and watching. `done`: a clean end, the others stop watching this rank too. After an error
        (done False) the others notice the silence and leave instead of waiting in a collective for this rank."""
        self._stop.set()
        if done:
            try:
                self.store.set(f"{self.KEY}done/{self.rank}", "1")
            except Exception:  # noqa: BLE001 - the store may already be gone at the very end of a job
                pass

    # ---------------------------------------------------------------- threads
    def _beat(self) -> None:
        try:
            self._beat_loop()
        except Exception as exc:  # noqa: BLE001 - a store that fails is as fatal as one that hangs
            self._fail(f"the rendezvous store ({os.environ.get('MASTER_ADDR', '?')}:"
                       f"{os.environ.get('MASTER_PORT', '?')}) failed ({type(exc).__name__}: {exc}): the process "
                       f"holding it (global rank 0 unless torchrun's agent holds it) is gone")

    def _beat_loop(self) -> None:
        seen = {r: (-1, time.monotonic()) for r in range(self.world) if r != self.rank}
        while not self._stop.wait(self.period):
            self.store.add(f"{self.KEY}{self.rank}", 1)
            now = time.monotonic()
            for r, (count, since) in list(seen.items()):
                value = self.store.add(f"{self.KEY}{r}", 0)  # read without blocking on a missing key
                if value != count:
                    seen[r] = (value, now)
                elif now - since > self.silent_after and not self._done(r):
                    self._fail(f"rank {r} ({self._where(r)}) has not sent a heartbeat for {now - since:.0f} s "
                               f"(bound {self.silent_after:.0f} s = half of --distributed-timeout-minutes): it is "
                               f"stopped, hung or dead")
            self._last_poll = time.monotonic()

    def _watch(self) -> None:
        while not self._stop.wait(self.period):
            stuck = time.monotonic() - self._last_poll
            if stuck > self.silent_after:
                self._fail(f"the rendezvous store ({os.environ.get('MASTER_ADDR', '?')}:"
                           f"{os.environ.get('MASTER_PORT', '?')}, held by global rank 0 unless torchrun's agent "
                           f"holds it) has not answered for {stuck:.0f} s: its process is stopped, hung or dead")

    def _done(self, r: int) -> bool:
        return self.store.check([f"{self.KEY}done/{r}"])

    def _where(self, r: int) -> str:
        try:
            if self.store.check([f"{self.KEY}host/{r}"]):
                return self.store.get(f"{self.KEY}host/{r}").decode()
        except Exception:  # noqa: BLE001 - naming the host is a courtesy
            pass
        return "host unknown"

    def _fail(self, why: str) -> None:
        if self._stop.is_set():
            return
        print(f"error: {why}; rank {self.rank} stops now (the last complete checkpoint in --save is intact; "
              f"resume with --load once every rank can run)", file=sys.stderr, flush=True)
        os._exit(self.exit_code)


def start_heartbeat(rank: int, world: int, timeout_minutes: float) -> Heartbeat | None:
    """A running Heartbeat on the default group's store (None with one process)."""
    import torch.distributed as dist

    if world <= 1 or not dist.is_initialized():
        return None
    # The default group's store: the one every rank met through (TCPStore for env:// and torchrun, FileStore for
    # file://); torch offers no public accessor.
    store = dist.distributed_c10d._get_default_store()
    return Heartbeat(store, rank, world, silent_after=30.0 * timeout_minutes).start()


@contextlib.contextmanager
def watched(rank: int, world: int, timeout_minutes: float):
    """Run the body under a heartbeat (several ranks only). On an error this rank stops beating without saying it
    is done, so the others notice and leave instead of waiting in a collective for it."""
    beat = start_heartbeat(rank, world, timeout_minutes)
    try:
        yield beat
    except BaseException:
        if beat is not None:
            beat.stop(done=False)
        raise
    if beat is not None:
        beat.stop(done=True)
