"""Tensor-parallel-aware random state (the CPU-capable equivalent of Megatron's CUDA RNG tracker).

Two streams per process:
- the default torch generator(s) (CPU, and CUDA when present): seeded identically on all TP ranks of a pipeline
  stage, so dropout OUTSIDE tensor-parallel regions (embedding dropout, residual dropout without sequence
  parallelism) draws the same mask on every TP rank -- the ranks hold the same activations and must stay equal;
- the tracker's "tensor-parallel" stream: seeded differently per TP rank, used (via `fork()`) for dropout INSIDE
  TP regions (attention probabilities of this rank's heads) and on sequence shards under sequence parallelism,
  where each rank holds different activations and identical masks would correlate them.

Seeds follow Megatron's convention: default stream `seed + 100 * pp_rank`, TP stream
`seed + 100 * pp_rank + 2718 + tp_rank`. `get_states()` / `set_states()` round-trip both streams for checkpoints.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch

TP_SEED_OFFSET = 2718
PP_SEED_STRIDE = 100


def _cuda() -> bool:
    return torch.cuda.is_available() and torch.cuda.device_count() > 0


class RNGTracker:
    """Named random streams that can be swapped in for the default generator(s) inside `fork(name)`."""

    def __init__(self) -> None:
        self._states: dict[str, dict[str, torch.Tensor]] = {}

    def add(self, name: str, seed: int) -> None:
        if name in self._states:
            raise ValueError(f"RNG stream '{name}' already exists")
        saved = self._capture()
        try:
            torch.manual_seed(seed)  # seeds CPU and (lazily) every CUDA device
            self._states[name] = self._capture()
        finally:
            self._restore(saved)

    @staticmethod
    def _capture() -> dict[str, torch.Tensor]:
        state = {"cpu": torch.get_rng_state()}
        if _cuda():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    @staticmethod
    def _restore(state: dict[str, torch.Tensor]) -> None:
        torch.set_rng_state(state["cpu"])
        if "cuda" in state and _cuda():
            torch.cuda.set_rng_state(state["cuda"])

    @contextlib.contextmanager
    def fork(self, name: str = "tensor_parallel") -> Iterator[None]:
        """Run the body with stream `name` as the default generator; the default stream is left untouched."""
        if name not in self._states:
            raise KeyError(f"RNG stream '{name}' was never added (call seed_parallel_rng first)")
        outer = self._capture()
        self._restore(self._states[name])
        try:
            yield
        finally:
            self._states[name] = self._capture()
            self._restore(outer)

    def get_states(self) -> dict[str, dict[str, torch.Tensor]]:
        """Copies of every tracked stream (for checkpoints; the default stream is saved by the caller)."""
        return {k: {d: t.clone() for d, t in v.items()} for k, v in self._states.items()}

    def set_states(self, states: dict[str, dict[str, torch.Tensor]]) -> None:
        self._states = {k: {d: t.clone() for d, t in v.items()} for k, v in states.items()}


def seed_parallel_rng(seed: int, tp_rank: int = 0, pp_rank: int = 0) -> RNGTracker:
    """Seed the default generators (same on all TP ranks of a stage) and return a tracker whose
    "tensor_parallel" stream differs per TP rank. Call once per process, before building/initializing."""
    base = seed + PP_SEED_STRIDE * pp_rank
    torch.manual_seed(base)
    tracker = RNGTracker()
    tracker.add("tensor_parallel", base + TP_SEED_OFFSET + tp_rank)
    return tracker


def tp_rng_tracker(tp_rank: int) -> RNGTracker:
    """The per-TP-rank dropout stream of a tensor-parallel model, seeded from torch's initial seed (the job seed
    once the trainer has seeded torch): what apply_tensor_parallel uses unless given one. The caller keeps it and
    hands it to whatever runs the model (activation checkpointing, the pipeline) and to checkpoints."""
    tracker = RNGTracker()
    tracker.add("tensor_parallel", torch.initial_seed() + TP_SEED_OFFSET + tp_rank)
    return tracker


def get_rng_state(tracker: RNGTracker | None) -> dict:
    """Everything needed to continue the random streams exactly: default CPU/CUDA state and the tracker's."""
    return {"default": RNGTracker._capture(), "tracker": tracker.get_states() if tracker is not None else {}}


def set_rng_state(state: dict, tracker: RNGTracker | None) -> None:
    RNGTracker._restore(state["default"])
    if tracker is not None and state.get("tracker"):
        tracker.set_states(state["tracker"])


def checkpoint(function: Callable, *args: Any, tracker: RNGTracker | None = None, **kwargs: Any):
    """Activation checkpointing (torch.utils.checkpoint, non-reentrant) that also replays the TP RNG stream:
    the recomputation in backward draws the same dropout masks inside TP regions as the forward did. Without
    this, the tracker has moved on by the time of the recompute and the gradients would be wrong whenever
    dropout > 0 inside TP regions. Usable as PipelineModule's `activation_checkpoint_func` via functools.partial.
    """
    import torch.utils.checkpoint as ckpt

    if tracker is None:
        return ckpt.checkpoint(function, *args, use_reentrant=False, preserve_rng_state=True, **kwargs)
    snapshot = tracker.get_states()

    @contextlib.contextmanager
    def replay():
        current = tracker.get_states()
        tracker.set_states(snapshot)
        try:
            yield
        finally:
            tracker.set_states(current)

    return ckpt.checkpoint(function, *args, use_reentrant=False, preserve_rng_state=True,
                           context_fn=lambda: (contextlib.nullcontext(), replay()), **kwargs)
