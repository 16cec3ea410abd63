"""Run guards: graceful stop on SIGTERM/SIGUSR1 (SLURM preemption sends these) or a first Ctrl-C, and non-finite loss
detection."""

from __future__ import annotations

import math
import os
import signal
import sys
from dataclasses import dataclass

from ..errors import UserError


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


class RunStopped(UserError, RuntimeError):
    """A started run ends on purpose: cli_main prints the message as one line (exit status 1). `every_rank`: each
    rank knows something the others may not (e.g. which peer went silent), so each prints it."""
    every_rank = False


class NonFiniteSteps(RunStopped):
    """Training cannot make a finite step (or rollback gave up): the run stops; the message says what happened,
    where the last good weights are and what to change. Printed as one line by cli_main."""


class NonFiniteWeights(RunStopped):
    """The model's weights hold NaN/inf: nothing is saved (a checkpoint of them would be resumed from)."""


@dataclass
class StepVerdict:
    skipped: bool
    why: str = ""
    loss: float = float("nan")  # the step's mean loss over every micro batch of every DP rank (nan if unknown)


class StepGuard:
    """Decides, once per optimizer step and before any weight changes, whether the step may happen.

    Installed as a wrapper around the torch optimizer's `step` (the one we build), which every DeepSpeed optimizer
    (ZeRO-0 wrappers, ZeRO-1/2/3 partitions, BF16_Optimizer, the pipeline engine) calls on every rank after it has
    reduced, unscaled and clipped the gradients and before it writes a weight. There the guard looks at

    - the gradients it can see (this rank's parameters or ZeRO partition): any NaN/inf element,
    - the global gradient norm, where known (DeepSpeed's `_global_grad_norm`, set in the same `step` before the
      inner step; the trainer's own norm on the plain fp32 path), non-finite or the -1 DeepSpeed uses for it,
    - the training losses of this step's micro batches (recorded by the trainer as they are computed): non-finite,
      or, with `spike_factor`, a mean above spike_factor x the mean of the last `SPIKE_WINDOW` accepted steps,

    and all-reduces [bad, loss sum, loss count] over the whole world, so every rank takes the same decision (TP
    ranks see other shards, PP stages other layers, ZeRO ranks other partitions). A refused step is not taken:
    the weights and the optimizer state stay as they were. DeepSpeed itself skips steps with a non-finite norm on
    most paths (fp16 overflow, ZeRO-1/2/3, BF16_Optimizer) before calling the inner step; `verdict()` reports
    those too (the DeepSpeed optimizer's `overflow`, which it decides globally)."""

    SPIKE_WINDOW = 100  # accepted steps in the running mean
    SPIKE_MIN_HISTORY = 5  # judge spikes only once this many steps were accepted (the first losses fall steeply)

    def __init__(self, optimizer, spike_factor: float = 0.0, device=None, world: int = 1):
        self.spike_factor, self.device, self.world = spike_factor, device, world
        self.history: list[float] = []
        self.outer = None  # DeepSpeed's optimizer around ours (set once the engine exists)
        self.known_norm: float | None = None  # the trainer's own norm for this step (plain fp32 path)
        self._inner_step = optimizer.step
        optimizer.step = self._guarded_step
        self.begin_step()

    # ---------------------------------------------------------------- per step
    def begin_step(self) -> None:
        self._losses: list = []
        self._decision: StepVerdict | None = None
        self.known_norm = None

    def record_loss(self, loss) -> None:
        """One training micro batch's loss on this rank (a tensor: kept on its device, read only when the step is
        decided, so recording costs no device sync)."""
        self._losses.append(loss.detach().float().reshape(()))

    def _guarded_step(self, *args, **kwargs):
        if self._decision is None:  # first call of this step (ZeRO calls it once per group / sub-group)
            self._decision = self._decide()
            if not self._decision.skipped:
                self.history = (self.history + [self._decision.loss])[-self.SPIKE_WINDOW:] \
                    if math.isfinite(self._decision.loss) else self.history
        if self._decision.skipped:
            return None
        return self._inner_step(*args, **kwargs)

    def _local_grads_bad(self) -> bool:
        import torch
        sums = [p.grad.detach().float().sum() for g in self._param_groups() for p in g["params"]
                if p.grad is not None]
        return bool(sums) and not bool(torch.isfinite(torch.stack(sums).sum()))

    def _param_groups(self):
        return self._inner_step.__self__.param_groups

    def _norm(self) -> float | None:
        if self.known_norm is not None:
            return self.known_norm
        norm = getattr(self.outer, "_global_grad_norm", None) if self.outer is not None else None
        return float(norm) if norm is not None else None

    def _decide(self) -> StepVerdict:
        import torch
        import torch.distributed as dist

        norm = self._norm()
        why = []
        loss_sum, count = 0.0, len(self._losses)
        if count:
            losses = torch.stack(self._losses).double().cpu()
            finite = torch.isfinite(losses)
            loss_sum = float(losses[finite].sum())
            if not bool(finite.all()):
                why.append("loss not finite")
        if norm is not None and (not math.isfinite(norm) or norm < 0):
            why.append(f"grad norm {norm if norm >= 0 else 'not finite'}")
        if self._local_grads_bad():
            why.append("gradient holds NaN/inf")
        flags = torch.tensor([1.0 if why else 0.0, loss_sum, float(count)], dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(flags)
        bad, loss_sum, count = (float(x) for x in flags.tolist())
        mean = loss_sum / count if count else float("nan")
        if bad:
            return StepVerdict(True, ", ".join(why) or "another rank's gradient or loss is not finite", mean)
        if self.spike_factor and len(self.history) >= self.SPIKE_MIN_HISTORY and math.isfinite(mean):
            running = sum(self.history) / len(self.history)
            if mean > self.spike_factor * running:
                return StepVerdict(True, f"loss spike: {mean:.4f} > {self.spike_factor:g} x running mean "
                                         f"{running:.4f}", mean)
        return StepVerdict(False, "", mean)

    def verdict(self, precision: str) -> StepVerdict:
        """What happened to this step (same on every rank). Call after the engine's step."""
        if self._decision is not None:
            return self._decision
        if getattr(self.outer, "overflow", False):
            if precision == "fp16":
                return StepVerdict(True, "fp16 overflow: the loss scaler skipped the step")
            return StepVerdict(True, "grad norm not finite")
        return StepVerdict(True, "the optimizer did not step")
