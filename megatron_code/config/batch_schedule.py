"""Global batch size schedules: the batch of every step as a pure function of (iteration, consumed samples).

Three ways to ask for one (TrainingConfig; at most one at a time):

- ``--rampup-batch-size START INCR SAMPLES`` (Megatron-LM's, as its RampupBatchsizeNumMicroBatchesCalculator defined
  it until April 2026, megatron/core/num_microbatches_calculator.py): with G = --global-batch-size,
  n = (G - START) / INCR increments spread over SAMPLES samples, the batch after c consumed samples is
  G if c > SAMPLES, else START + int(c / (SAMPLES / n)) x INCR. Current Megatron-LM deprecates the flag (and ignores
  it) in favour of the next one; we keep its old meaning so older launch scripts train as they did.
- ``--step-batch-size-schedule "THRESHOLD:BS ..."`` (current Megatron-LM's StepBatchsizeNumMicroBatchesCalculator):
  the batch is BS of the last entry whose THRESHOLD <= consumed; thresholds in tokens (Megatron's trainer passes
  --seq-length, so tokens // seq_length samples), suffixes K, M, B, T; the first threshold must be 0; entries
  may be separated by spaces or commas. The final batch is the last entry's (it replaces --global-batch-size,
  which Megatron then refuses).
- ``--batch-size-schedule "BS:STEP,BS:STEP,..."`` (ours, for step-based recipes such as PaLM's 512 -> 1024 at
  step 50k -> 2048 at step 115k, Chowdhery et al. 2022, sec. 5): the batch is BS of the last entry whose STEP <=
  the 0-based iteration. The first STEP must be 0.

The global batch changes through the number of accumulated micro batches; the micro batch size and the data
order (a stream of micro batches over consumed samples) do not change, so a resumed run continues exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .base import ConfigError

_SUFFIX = {"K": 10 ** 3, "M": 10 ** 6, "B": 10 ** 9, "T": 10 ** 12}


def _number(text: str, flag: str) -> int:
    t = text.strip().upper()
    mult = 1
    if t and t[-1] in _SUFFIX:
        mult, t = _SUFFIX[t[-1]], t[:-1]
    try:
        return int(float(t) * mult)
    except ValueError:
        raise ConfigError(f"{flag}: '{text}' is not a number (suffixes K, M, B, T allowed)") from None


def _pairs(text: str, flag: str, example: str) -> list[tuple[int, int]]:
    entries = text.strip().replace(",", " ").split()
    if not entries:
        raise ConfigError(f"{flag}: empty schedule (example: {example})")
    out = []
    for entry in entries:
        if ":" not in entry:
            raise ConfigError(f"{flag}: entry '{entry}' is not A:B (example: {example})")
        a, b = entry.split(":", 1)
        out.append((_number(a, flag), _number(b, flag)))
    return out


def _check_steps(points: list[tuple[int, int]], flag: str, what: str) -> None:
    """points: (threshold, batch) sorted by threshold."""
    if points[0][0] != 0:
        raise ConfigError(f"{flag}: the first {what} must be 0 (the batch the run starts with), got {points[0][0]}")
    for (t0, _), (t1, _) in zip(points, points[1:]):
        if t1 <= t0:
            raise ConfigError(f"{flag}: {what}s must be strictly increasing, got {t0} then {t1}")
    for _, b in points:
        if b <= 0:
            raise ConfigError(f"{flag}: batch sizes must be positive, got {b}")


@dataclass(frozen=True)
class BatchSchedule:
    """kind: constant | rampup | samples (thresholds in consumed samples) | iterations (thresholds in steps)."""
    kind: str
    final: int
    points: tuple[tuple[int, int], ...] = ()  # samples / iterations kinds: (threshold, batch), sorted
    start: int = 0  # rampup
    increment: int = 0
    rampup_samples: int = 0

    def batch_at(self, iteration: int, consumed: int) -> int:
        """Global batch of the step that starts after `iteration` steps and `consumed` samples."""
        if self.kind == "constant":
            return self.final
        if self.kind == "rampup":
            if consumed > self.rampup_samples:
                return self.final
            per_increment = self.rampup_samples / ((self.final - self.start) // self.increment)
            return self.start + int(consumed / per_increment) * self.increment
        position = consumed if self.kind == "samples" else iteration
        batch = self.points[0][1]
        for threshold, b in self.points:
            if position >= threshold:
                batch = b
            else:
                break
        return batch

    def walk(self, iterations: int):
        """(iteration, consumed before it, its batch) for the first `iterations` steps."""
        consumed = 0
        for it in range(iterations):
            b = self.batch_at(it, consumed)
            yield it, consumed, b
            consumed += b

    def samples_through(self, iterations: int) -> int:
        """Samples consumed by the first `iterations` steps."""
        if self.kind == "constant":
            return iterations * self.final
        return sum(b for _, _, b in self.walk(iterations))

    def iterations_for(self, samples: int) -> int:
        """Steps until at least `samples` samples are consumed (rounding up, as JobConfig.resolve_units does)."""
        if self.kind == "constant":
            return -(-samples // self.final)
        it, consumed = 0, 0
        while consumed < samples:
            consumed += self.batch_at(it, consumed)
            it += 1
        return it

    def sizes(self, iterations: int) -> list[int]:
        """Every distinct global batch the first `iterations` steps use (for the divisibility check)."""
        if self.kind == "constant":
            return [self.final]
        if self.kind == "iterations":
            return sorted({b for t, b in self.points if t < max(iterations, 1)} | {self.points[0][1]})
        if self.kind == "rampup":
            return list(range(self.start, self.final + 1, self.increment))
        return sorted({b for _, b in self.points})

    def describe(self) -> str:
        if self.kind == "constant":
            return f"constant {self.final}"
        if self.kind == "rampup":
            return (f"ramp-up {self.start} -> {self.final} by {self.increment} over {self.rampup_samples:,} samples "
                    f"(Megatron's --rampup-batch-size)")
        unit = "samples" if self.kind == "samples" else "step"
        return ", ".join(f"{b} from {unit} {t:,}" for t, b in self.points)


def build_schedule(global_batch_size: Optional[int], rampup: Optional[list[int]], step_schedule: Optional[str],
                   iteration_schedule: Optional[str], seq_length: int) -> BatchSchedule:
    given = [name for name, v in (("--rampup-batch-size", rampup), ("--step-batch-size-schedule", step_schedule),
                                  ("--batch-size-schedule", iteration_schedule)) if v]
    if len(given) > 1:
        raise ConfigError(f"{' and '.join(given)}: give one batch-size schedule")
    if rampup:
        if len(rampup) != 3:
            raise ConfigError(f"--rampup-batch-size takes START INCREMENT SAMPLES (three numbers), got {rampup}")
        start, incr, samples = (int(v) for v in rampup)
        if global_batch_size is None:
            raise ConfigError("--rampup-batch-size ramps up to --global-batch-size: give --global-batch-size")
        if start <= 0 or incr <= 0 or samples <= 0:
            # (Megatron admits SAMPLES = 0 and then divides 0 by 0 at the first step)
            raise ConfigError(f"--rampup-batch-size: START, INCREMENT and SAMPLES must be positive, got "
                              f"{start} {incr} {samples}")
        diff = global_batch_size - start
        if diff < 0 or diff % incr:
            raise ConfigError(f"--rampup-batch-size: --global-batch-size ({global_batch_size}) - START ({start}) must "
                              f"be a non-negative multiple of INCREMENT ({incr})")
        if diff == 0:
            return BatchSchedule("constant", global_batch_size)
        return BatchSchedule("rampup", global_batch_size, start=start, increment=incr, rampup_samples=samples)
    if step_schedule:
        flag = "--step-batch-size-schedule"
        points = sorted((tokens // seq_length, b) for tokens, b in _pairs(step_schedule, flag, "'0:768 250B:1536'"))
        _check_steps(points, flag, "threshold")
        _check_final(global_batch_size, points[-1][1], flag)
        return BatchSchedule("samples", points[-1][1], points=tuple(points))
    if iteration_schedule:
        flag = "--batch-size-schedule"
        points = sorted((step, b) for b, step in _pairs(iteration_schedule, flag, "'512:0,1024:50000'"))
        _check_steps(points, flag, "step")
        _check_final(global_batch_size, points[-1][1], flag)
        return BatchSchedule("iterations", points[-1][1], points=tuple(points))
    if global_batch_size is None:
        raise ConfigError("the global batch size is not known yet (internal: resolve_batch sets it)")
    return BatchSchedule("constant", global_batch_size)


def _check_final(global_batch_size: Optional[int], final: int, flag: str) -> None:
    if global_batch_size is not None and global_batch_size != final:
        raise ConfigError(f"{flag} ends at batch {final} but --global-batch-size is {global_batch_size}: drop "
                          f"--global-batch-size (the schedule sets it) or make them agree")
