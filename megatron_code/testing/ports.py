"""`free_port()`: a TCP port for a test's launcher (`torchrun --master_port`, `deepspeed --master_port`) that no
concurrently running test will also be handed.

Why not the usual "bind port 0, read the number, close": the kernel then picks from the ephemeral range
(/proc/sys/net/ipv4/ip_local_port_range, 32768-60999 by default), the same range every outgoing connection and
every gloo pair socket of every other test is drawn from. Between our close and the launcher's own bind (seconds
under load) another process may take the port, and the launcher fails with "address already in use". Under
pytest-xdist several workers launch at once, so that race is no longer rare.

Here ports come from 10000-19999, below the ephemeral range (so the kernel never hands them out by itself) and
below the 20000-39999 that `parallel.engine.launch_environment` derives for SLURM steps. Each xdist worker
(PYTEST_XDIST_WORKER=gwN of PYTEST_XDIST_WORKER_COUNT) gets its own slice, so two workers never choose the same
port; inside a slice the start is random (independent pytest runs on one machine rarely meet) and successive
calls walk forward (a port just released by the previous test is not reused at once). A port is returned only
if it can be bound right now.
"""

from __future__ import annotations

import os
import random
import socket

LOW, HIGH = 10000, 20000  # [LOW, HIGH): below the ephemeral range and the SLURM step ports

_next: int | None = None


def _slice() -> tuple[int, int]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    if count <= 1 or index >= count:
        return LOW, HIGH
    width = (HIGH - LOW) // count
    return LOW + index * width, LOW + (index + 1) * width


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port of this worker's slice that is free now (see the module docstring)."""
    global _next
    low, high = _slice()
    if _next is None or not low <= _next < high:
        _next = random.SystemRandom().randrange(low, high)
    for _ in range(high - low):
        port, _next = _next, low + (_next + 1 - low) % (high - low)
        if _bindable(port):
            return port
    raise RuntimeError(f"no free TCP port in {low}-{high - 1}")
