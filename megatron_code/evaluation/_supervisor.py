"""Supervisor side of the sandbox (see sandbox.py for the layout and the layers of protection).

Run by ``sandbox._Supervisor`` as ``python -I -S -B _supervisor.py --supervise`` (root, own session): one JSON job
per stdin line, one JSON report per stdout line, exit at EOF. For each job it forks the program side, which
enters the jail (rlimits, no-new-privs, uid drop, destructive calls patched) and execs the source; the supervisor
waits with a wall-clock bound, then kills and reaps every descendant.

This file must stay a stdlib-only script that starts fast: it is executed directly (not as part of the package),
so it imports nothing from megatron_code. sandbox.py imports its shared constants and `_world_reachable`.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import secrets
import select
import signal
import stat
import sys
import time

_SETUP_FAILED = 121  # program-side exit code: the jail could not be entered; never run the program then
_CLONE_NEWUSER, _CLONE_NEWNET = 0x10000000, 0x40000000
_PR_SET_CHILD_SUBREAPER, _PR_SET_NO_NEW_PRIVS = 36, 38


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
