"""Supervisor side of the sandbox (see sandbox.py for the layout and docs/sandbox.md for the threat model).

Run by ``sandbox._Supervisor`` as ``python -I -S -B _supervisor.py --supervise --backend B`` (root, or
inside bubblewrap with capabilities in its own user namespace): one JSON job per stdin line, one JSON report per
stdout line, exit at EOF.

Per job it forks:

    S (this process, never runs user code)
    |-- C: unshare(CLONE_NEWPID), then fork P and relay P's exit status and rusage to S through a pipe
    |   '-- P (pid 1 of a fresh pid namespace): new mount + IPC namespace, a skeleton root (read-only binds of
    |       /usr and the interpreter, private size-capped tmpfs /tmp and /dev/shm, a private /proc), pivot_root,
    |       privileges dropped (fresh uid / every capability), rlimits, no-new-privs, seccomp; then the program
    '-- K (checked jobs only): the checker. Fresh clean interpreter state (a fork of S), privileges dropped,
        rlimits, seccomp. It runs the *trusted* test code and calls the candidate through a socket: P executes the
        call and answers with plain data only (ints, floats, strings, lists, ...) which K decodes into genuine
        builtin objects. The verdict is K's exit status, read by S with wait4: nothing in P's interpreter can
        reach it (P sees neither K nor S: other pid namespace, other uid or no capabilities, no ptrace).

Killing P kills its whole pid namespace, so nothing a program starts can outlive it; its mount namespace, with
the tmpfs mounts, and its IPC namespace die with it.

This file and its helpers _jail.py (namespaces, mounts, privileges, seccomp) and _wire.py (the plain-data
channel between program and checker) must stay stdlib-only and start fast: the supervisor is executed as a
script, outside the package, so they import nothing from megatron_code.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import signal
import sys
import time

if __package__:
    from . import _jail, _wire
else:  # run as a script (python -I -S): -I keeps this directory off sys.path, so add it just for these two
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path.append(_here)
    import _jail  # noqa: E402
    import _wire  # noqa: E402
    sys.path.remove(_here)
_SETUP_FAILED = _jail._SETUP_FAILED
_CLONE_NEWNET = _jail._CLONE_NEWNET
_CLONE_NEWPID = _jail._CLONE_NEWPID
_PR_SET_CHILD_SUBREAPER = _jail._PR_SET_CHILD_SUBREAPER
_libc = _jail._libc
_check = _jail._check
_can_mount_proc = _jail._can_mount_proc
_read_only_binds = _jail._read_only_binds
_enter_jail = _jail._enter_jail
_disable_destructive_calls = _jail._disable_destructive_calls
_safe_print = _jail._safe_print
_reroute_unreachable_imports = _jail._reroute_unreachable_imports
_drop_privileges = _jail._drop_privileges
_common_limits = _jail._common_limits
_serve_checker = _wire._serve_checker
_send_quietly = _wire._send_quietly
_print_exc = _wire._print_exc
_flush_and_exit = _wire._flush_and_exit
_run_check = _wire._run_check


def _supervise(backend: str, network: bool) -> None:
    """Supervisor main loop: one JSON job per stdin line, one JSON report per stdout line, exit at EOF."""
    import site  # with -S importing site does not run site.main(): only put site-packages on the path (no .pth)

    sys.path.extend(p for p in site.getsitepackages() if os.path.isdir(p) and p not in sys.path)
    # imported once here, not per fork; the jailed program may not be able to read them later
    import faulthandler, importlib, shutil, subprocess, traceback, builtins, linecache  # noqa: E401,F401

    notes: list[str] = []
    if not network and backend == "root":
        _check(_libc().unshare(_CLONE_NEWNET), "unshare(CLONE_NEWNET)")  # bubblewrap does this itself
    if _libc().prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        notes.append("could not become child subreaper: orphans of the program are reaped by init")
    binds = _read_only_binds()
    proc = _can_mount_proc(binds)
    if not proc:
        notes.append("the jail has no /proc: a fresh proc cannot be mounted here (bubblewrap run by root covers "
                     "parts of /proc, which makes the kernel refuse); processes stay hidden")
    while True:
        line = sys.stdin.buffer.readline()
        if not line:
            os._exit(0)
        cfg = json.loads(line)
        cfg["backend"], cfg["binds"], cfg["proc"] = backend, binds, proc
        report = _run_one(cfg)
        report["notes"] = notes + report["notes"]
        data = (json.dumps(report) + "\n").encode()
        while data:
            data = data[os.write(1, data):]


def _run_one(cfg: dict) -> dict:
    """Run one job: fork C (-> P) and for checked jobs K; wait (bounded by cfg["timeout"]); kill and reap all."""
    notes: list[str] = []
    checked = cfg["mode"] == "checked"
    token = secrets.token_hex(16).encode()
    info_r, info_w = os.pipe()
    done_r, done_w = os.pipe()
    if checked:
        import socket

        prog_sock, check_sock = socket.socketpair()
        prog_end, check_end = prog_sock.detach(), check_sock.detach()
    else:
        prog_end = check_end = -1
    out_fd = os.open(cfg["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    err_fd = os.open(cfg["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    started = time.monotonic()
    deadline = started + cfg["timeout"]
    c_pid = os.fork()
    if c_pid == 0:  # C: never returns
        os.close(info_r)
        os.close(done_r)
        if checked:
            os.close(check_end)
        _intermediate_main(cfg, token, info_w, done_w, prog_end, out_fd, err_fd)
    for fd in (info_w, done_w, out_fd, err_fd, prog_end):
        if fd >= 0:
            os.close(fd)
    k_pid = None
    if checked:
        chk_fd = os.open(cfg["check_output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        k_pid = os.fork()
        if k_pid == 0:  # K: never returns
            os.close(info_r)
            os.close(done_r)
            _checker_main(cfg, check_end, chk_fd)
        os.close(chk_fd)
        os.close(check_end)
    info = _Info(info_r)
    status = usage = check_status = None
    timed_out = killed_by_us = False
    k_pidfd = os.pidfd_open(k_pid) if k_pid else None
    while True:
        if info.final is not None and (not checked or check_status is not None):
            break
        if checked and check_status is not None and info.p_pid is not None and not killed_by_us \
                and info.final is None:
            info.kill_program()  # the verdict is in: the program has nothing left to do
            killed_by_us = True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = True
            break
        fds = [info_r] if not info.eof else []
        if k_pidfd is not None and check_status is None:
            fds.append(k_pidfd)
        if not fds:
            time.sleep(min(remaining, 0.005))
        else:
            ready = select.select(fds, [], [], min(remaining, 0.5))[0]
            if info_r in ready:
                info.read()
        if k_pid and check_status is None:
            try:
                wpid, wstatus = os.waitpid(k_pid, os.WNOHANG)
            except ChildProcessError:
                wpid, wstatus = k_pid, 1 << 8
            if wpid == k_pid:
                check_status = wstatus
        if info.eof and info.final is None:  # C died without reporting: it must not, but never wait forever
            break
    if timed_out or info.final is None:
        killed_by_us = killed_by_us or info.p_pid is not None
        info.kill_program()
    if k_pid and check_status is None:
        _kill_if_child_of(k_pid, os.getpid())
    # C reports P's status as soon as P (pid 1 of its namespace, so with everything it started) is gone.
    info.wait_final(time.monotonic() + 3.0)
    if info.final is not None:
        status, usage = info.final["status"], info.final
    # C exits right after its report and K was killed or has exited: wait for exactly these two (pidfds), so that the
    # sweep below usually finds no child and skips its /proc scan (~20 ms on a busy host, measured).
    for pid, done in ((c_pid, False), (k_pid, not k_pid or k_pidfd is None or check_status is not None)):
        if not done:
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                continue
            select.select([fd], [], [], 1.0)
            os.close(fd)
    _late_c, _, stragglers = _kill_and_reap_all(c_pid, k_pid)
    if k_pid and check_status is None:
        check_status = _late_c.get(k_pid)
    if k_pidfd is not None:
        os.close(k_pidfd)
    if stragglers:
        notes.append(f"{stragglers} descendant process(es) could not be reaped within the grace period")
    duration = time.monotonic() - started
    os.set_blocking(done_r, False)
    try:
        completed = os.read(done_r, 64) == token
    except BlockingIOError:
        completed = False
    os.close(done_r)
    os.close(info_r)
    if info.setup_error:
        notes.append(info.setup_error)
    rc = _rc(status)
    report = {"returncode": rc if rc is not None else -9, "timed_out": timed_out, "completed": completed,
              "duration": duration, "cpu": usage["cpu"] if usage else 0.0, "notes": notes,
              "killed_by_us": killed_by_us}
    if checked:
        report["check_returncode"] = _rc(check_status)
    return report


def _rc(status):
    if status is None:
        return None
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


class _Info:
    """Supervisor's reader of C's pipe: first line P's pid (in our pid namespace) or a setup error, then one JSON
    line with P's wait status and CPU time once P has exited."""

    def __init__(self, fd: int):
        self.fd, self.buffer, self.eof = fd, b"", False
        self.p_pid = self.pidfd = self.final = self.setup_error = None

    def read(self) -> None:
        chunk = os.read(self.fd, 65536)
        if not chunk:
            self.eof = True
        self.buffer += chunk
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            msg = json.loads(line)
            if "pid" in msg:
                self.p_pid = msg["pid"]
                try:
                    self.pidfd = os.pidfd_open(self.p_pid)
                except OSError:  # already gone (and reaped by C)
                    self.pidfd = None
            elif "error" in msg:
                self.setup_error = msg["error"]
            else:
                self.final = msg

    def kill_program(self) -> None:
        if self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except OSError:
                pass

    def wait_final(self, until: float) -> None:
        while self.final is None and not self.eof:
            remaining = until - time.monotonic()
            if remaining <= 0 or not select.select([self.fd], [], [], remaining)[0]:
                return
            self.read()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def _intermediate_main(cfg: dict, token: bytes, info_w: int, done_w: int, prog_end: int, out_fd: int,
                       err_fd: int) -> None:
    """C: owns the pid namespace of one program. Reports P's pid, then P's exit status and CPU time."""
    try:
        _check(_libc().unshare(_CLONE_NEWPID), "unshare(CLONE_NEWPID)")
        pid = os.fork()
    except BaseException as exc:  # noqa: BLE001
        os.write(info_w, (json.dumps({"error": f"sandbox setup failed: {exc}"}) + "\n").encode())
        os.write(info_w, (json.dumps({"status": _SETUP_FAILED << 8, "cpu": 0.0}) + "\n").encode())
        os._exit(0)
    if pid == 0:  # P, pid 1 of the new namespace
        os.close(info_w)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        _program_main(cfg, token, done_w, prog_end)
    for fd in (done_w, out_fd, err_fd, prog_end):
        if fd >= 0:
            os.close(fd)
    os.write(info_w, (json.dumps({"pid": pid}) + "\n").encode())
    while True:
        try:
            _, status, usage = os.wait4(pid, 0)
            break
        except InterruptedError:
            continue
    os.write(info_w, (json.dumps({"status": status, "cpu": usage.ru_utime + usage.ru_stime}) + "\n").encode())
    os._exit(0)


def _kill_and_reap_all(*pids, grace: float = 3.0):
    """SIGKILL every descendant until none is left (we are their subreaper, so "no child left" means "no
    descendant left"). Returns ({pid: status} of `pids` reaped here, rusage dict, number of stragglers)."""
    statuses: dict[int, int] = {}
    end = time.monotonic() + grace
    me = os.getpid()
    while True:
        for wpid, wstatus, _ in _reap_nohang():
            if wpid in pids:
                statuses[wpid] = wstatus
        try:
            os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return statuses, None, 0
        tree = _descendants(me)
        if time.monotonic() > end:
            return statuses, None, len(tree)
        for child, parent in tree:
            _kill_if_child_of(child, parent)
        time.sleep(0.002)


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


def _program_main(cfg: dict, token: bytes, done_w: int, prog_end: int) -> None:
    """P: enter the jail, then run the program (script) or serve the checker's calls (checked). Never returns."""
    try:
        import builtins
        import traceback

        code = compile(cfg["source"], "/tmp/program.py", "exec")
    except SyntaxError:
        traceback.print_exc()
        if prog_end >= 0:
            _send_quietly(prog_end, ["module_error", "SyntaxError in the solution"])
        os._exit(1)
    except BaseException:  # noqa: BLE001
        os._exit(_SETUP_FAILED)
    try:
        _enter_jail(cfg, keep=[done_w, prog_end])
        _disable_destructive_calls(cfg["network"])
    except BaseException as exc:  # noqa: BLE001 - never run the program outside the jail
        _safe_print(f"sandbox setup failed: {exc!r}\n")
        os._exit(_SETUP_FAILED)
    namespace = {"__name__": "__main__", "__file__": "/tmp/program.py", "__builtins__": builtins}
    if prog_end >= 0:
        os.close(done_w)
        _serve_checker(code, namespace, cfg["entry_point"], prog_end)
    exit_code = 0
    try:
        exec(code, namespace)
    except SystemExit as exc:
        exit_code = 1
        _safe_print(f"program called exit({exc.code!r}) before its end: counted as failed\n")
    except BaseException:  # noqa: BLE001 - the program's own failure
        exit_code = 1
        _print_exc()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001 - e.g. the file size limit hit while flushing
        exit_code = exit_code or 1
    if exit_code == 0:
        # Script mode only. This token proves "ran to its end" against accidents (os._exit, sys.exit), not against
        # a program that searches its own memory; checked jobs do not use it (their verdict is the checker's).
        os.write(done_w, token)
    os._exit(exit_code)


def _checker_main(cfg: dict, fd: int, out_fd: int) -> None:
    """K: run the trusted test against a proxy of the candidate; exit 0 only if `check` returned normally."""
    try:
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        path_fds = _reroute_unreachable_imports() if cfg["backend"] == "root" else []
        _drop_privileges(_libc(), cfg["backend"], cfg["check_uid"], cfg["check_gid"])
        _common_limits({"limits": cfg["check_limits"]}, [fd, *path_fds])
    except BaseException as exc:  # noqa: BLE001
        _safe_print(f"sandbox checker setup failed: {exc!r}\n")
        os._exit(_SETUP_FAILED)
    code = 1
    try:
        _run_check(cfg, fd)
        code = 0
    except BaseException:  # noqa: BLE001 - includes SystemExit raised by the test itself
        _print_exc()
    _flush_and_exit(code)


if __name__ == "__main__" and sys.argv[1:2] == ["--supervise"]:
    _args = sys.argv[2:]
    _supervise(backend=_args[_args.index("--backend") + 1], network="--network" in _args)
