# Script: fill /tmp and /dev/shm (RAM-backed tmpfs on most hosts) and leave a SysV shared-memory segment behind.
# On the old sandbox the files persisted after the run, without bound. Prints JSON: bytes written per place and
# the error that stopped it.
import ctypes
import json
import os

out = {}
for place in ("/tmp", "/dev/shm"):
    written, error, i = 0, None, 0
    chunk = b"x" * (1 << 20)
    while written < PARAMS["try_bytes"]:
        try:
            with open(os.path.join(place, f"{PARAMS['marker']}-{i}"), "wb") as f:
                for _ in range(PARAMS["file_mb"]):
                    f.write(chunk)
                    written += len(chunk)
        except OSError as exc:
            error = exc.strerror
            break
        i += 1
    out[place] = {"written": written, "error": error}
libc = ctypes.CDLL(None, use_errno=True)
shmid = libc.shmget(PARAMS["shm_key"], 1 << 20, 0o1000 | 0o666)  # IPC_CREAT
out["sysv_shmid"] = shmid
print(json.dumps(out))
