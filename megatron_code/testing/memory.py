"""Peak-memory measurement for tests and benchmarks (Linux): how far a block of code raised this process's peak
resident set above the resident set it started from."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


@dataclass
class PeakGrowth:
    bytes: int = 0  # set when the block ends

    @property
    def mib(self) -> float:
        return self.bytes / 2 ** 20


@contextlib.contextmanager
def peak_rss_growth():
    """`with peak_rss_growth() as g: ...` then `g.bytes`: the peak RSS (VmHWM) during the block minus the RSS at its
    start. The peak is reset on entry (/proc/self/clear_refs "5"), so earlier high-water marks do not hide it."""
    g = PeakGrowth()
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    yield g
    g.bytes = (_status_kib("VmHWM") - before) * 1024
