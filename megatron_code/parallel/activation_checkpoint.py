"""Activation checkpointing for the non-pipeline path: recompute each transformer block in backward.

Applied from outside the model (principle: the model knows nothing of this): each block's bound `forward` is
replaced by one that runs the original under `parallel.random.checkpoint`, which also replays the tensor-parallel
dropout stream during recomputation. Module and parameter names are unchanged, so checkpoints, plans and
converters see the same model. (The pipeline path uses DeepSpeed's activation_checkpoint_interval instead.)
"""

from __future__ import annotations

import types

from torch import nn

from .random import checkpoint


def apply_activation_checkpointing(model: nn.Module, interval: int, tracker=None) -> int:
    """Checkpoint blocks 0, N, 2N, ... of `model.layers` (N = `interval`; 1 = every block). Returns the count.

    Megatron's --checkpoint-num-layers N recomputes chunks of N blocks from one saved input; here N > 1 instead
    recomputes one block in every N (less recomputation, more memory). Both trade memory for compute; ours keeps
    the block as the unit so nothing about the model's structure changes. `tracker`: a tensor-parallel model's
    dropout stream (random.tp_rng_tracker), replayed in the recomputation."""
    if interval <= 0:
        return 0
    wrapped = 0
    for i, block in enumerate(model.layers):
        if i % interval:
            continue
        original = block.forward

        def forward(self, x, rope=None, cache=None, mask=None, _original=original):
            if cache is not None or not self.training:
                return _original(x, rope, cache, mask)  # generation/eval: nothing to save memory for
            return checkpoint(_original, x, rope, None, mask, tracker=tracker)

        block.forward = types.MethodType(forward, block)
        wrapped += 1
    return wrapped
