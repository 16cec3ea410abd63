"""Run guards: graceful stop on SIGTERM/SIGUSR1 (SLURM preemption sends these) or a first Ctrl-C, and non-finite loss
detection."""

from __future__ import annotations

import math
import os
import signal
import sys


class StopSignal:
    """Remembers that a stop was requested; the trainer saves and exits at the next iteration boundary. A second
    Ctrl-C (SIGINT) interrupts at once, without saving."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self) -> "StopSignal":
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, _frame) -> None:
        if signum == signal.SIGINT:
            if self.received == signal.SIGINT:
                raise KeyboardInterrupt
            if os.environ.get("RANK", "0") == "0":
                print("\nCtrl-C: stopping after this iteration (saving first if --save is set); press Ctrl-C again "
                      "to quit at once without saving", file=sys.stderr, flush=True)
        self.received = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class NonFiniteLoss(RuntimeError):
    pass


def check_finite(loss: float, iteration: int, precision: str) -> None:
    """fp16 overflow is handled by the loss scaler (the step is skipped); anything else non-finite is fatal."""
    if precision != "fp16" and not math.isfinite(loss):
        raise NonFiniteLoss(f"loss is {loss} at iteration {iteration}: lower --lr, check the data for bad token "
                            f"ids, or use --bf16; resume from the last checkpoint with --load")
