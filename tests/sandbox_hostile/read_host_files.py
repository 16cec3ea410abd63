# Script: copy out what other jobs and users left readable: a world-readable file the test wrote, usual system
# and home files, and every other process's command line (where secrets are often passed). Prints JSON.
import json
import os

found = {}
for path in PARAMS["files"] + ["/etc/passwd", "/etc/hostname", "/etc/hosts", "/root/.bashrc", "/home",
                                "/work", "/var/log", "/run", "/srv", "/mnt", "/opt", "/sys/class/net"]:
    try:
        if os.path.isdir(path):
            found[path] = sorted(os.listdir(path))[:20]
        else:
            with open(path, "rb") as f:
                found[path] = f.read(200).decode("utf-8", "replace")
    except OSError:
        pass
pids, cmdlines = [], []
try:
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
except OSError:
    pass
for pid in pids:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdlines.append(f.read().replace(b"\0", b" ").decode("utf-8", "replace"))
    except OSError:
        pass
print(json.dumps({"found": found, "pids": pids, "cmdlines": cmdlines, "my_pid": os.getpid()}))
