# Script: the calls a program needs to build its own way out: new user namespaces (where it would be root),
# mounts, ptrace of a neighbour, entering another namespace, chroot, exec of another program. Prints JSON:
# the errno each call ended with (0 = it worked).
import ctypes
import json
import os
import platform

libc = ctypes.CDLL(None, use_errno=True)
NR = {"x86_64": {"clone": 56, "setns": 308}, "aarch64": {"clone": 220, "setns": 268}}[platform.machine()]
CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET, SIGCHLD = 0x10000000, 0x00020000, 0x40000000, 17


def attempt(fn):
    ctypes.set_errno(0)
    rc = fn()
    return 0 if rc >= 0 else ctypes.get_errno()


results = {
    "unshare(CLONE_NEWUSER)": attempt(lambda: libc.unshare(CLONE_NEWUSER)),
    "unshare(CLONE_NEWNS)": attempt(lambda: libc.unshare(CLONE_NEWNS)),
    "unshare(CLONE_NEWNET)": attempt(lambda: libc.unshare(CLONE_NEWNET)),
    "mount(tmpfs)": attempt(lambda: libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 0, None)),
    "ptrace(PTRACE_TRACEME)": attempt(lambda: libc.ptrace(0, 0, None, None)),
    "setns": attempt(lambda: libc.syscall(NR["setns"], 0, 0)),
    "chroot": attempt(lambda: libc.chroot(b"/tmp")),
}
# clone(CLONE_NEWUSER) directly, as fork() would with a flag: the child (if any) exits at once.
rc = libc.syscall(NR["clone"], SIGCHLD | CLONE_NEWUSER, 0, 0, 0, 0)
if rc == 0:
    os._exit(0)
results["clone(CLONE_NEWUSER)"] = 0 if rc > 0 else ctypes.get_errno()
try:
    import posix
    posix.execv("/bin/sh", ["sh", "-c", "true"])
except OSError as exc:
    results["execve"] = exc.errno
print(json.dumps(results))
