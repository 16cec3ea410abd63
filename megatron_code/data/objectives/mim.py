"""Meet-in-the-Middle (MIM) batches (Nguyen et al., 2023, "Meet in the Middle: A New Pre-training Paradigm").

One decoder with shared weights reads every sample twice in the same batch: left-to-right after an ``<l2r>``
sentinel and right-to-left after an ``<r2l>`` sentinel. The loss (``training/losses.py: mim_loss``) is the two
next-token losses plus ``beta`` x an agreement term that compares, for every token, the forward distribution
(given the tokens before it) with the backward distribution (given the tokens after it).

Layout. A sample is S+1 tokens ``t_0 .. t_S`` (the usual Megatron sample: labels are inputs shifted by one). Both
directions predict the same S tokens ``t_0 .. t_{S-1}``; ``t_S`` is dropped so the rows stay S long::

    forward  row b:      input  = [<l2r>, t_0,     t_1,     ..., t_{S-2}]     (S tokens)
                         labels = [t_0,   t_1,     t_2,     ..., t_{S-1}]
    backward row B+b:    input  = [<r2l>, t_{S-1}, t_{S-2}, ..., t_1    ]     (S tokens)
                         labels = [t_{S-1}, t_{S-2}, ...,        t_0    ]

The sentinel takes position 0, so every sample token moves one place right and the last one (``t_{S-1}`` in
the forward input, ``t_0`` in the backward input) falls off the end; it is still a *label*. Forward position i
predicts ``t_i`` from ``t_0 .. t_{i-1}``; backward position ``S-1-i`` predicts the same ``t_i`` from
``t_{S-1} .. t_{i+1}``. ``align_index[i] = S-1-i`` maps a forward position to the backward position with the same
target (it is its own inverse). Every direction has S targets per sample, as many as plain causal LM.

Masks. ``loss_mask`` (per row) follows the caller's token mask (``mask[j]``: "token j may be a target", e.g. 0
on ``<fim_pad>``) and is also 0 on ``pad_id`` targets. ``agree_mask`` (B, S), indexed by *forward* position, is
``loss_mask`` of both directions and 0 on EOD targets: at an EOD the forward model predicts "this document ends"
and the backward model "the next document starts", which are different events.
"""

from __future__ import annotations

from typing import Optional

import torch

from ...errors import UserError

__all__ = ["mim_batch", "mim_forward_batch", "MIMError"]


class MIMError(UserError, ValueError):
    """A user-fixable MIM input problem (wrong shapes, sequence too short, missing sentinels)."""


def _check(tokens: torch.Tensor, loss_mask: Optional[torch.Tensor]) -> None:
    if tokens.dim() != 2 or tokens.shape[1] < 2:
        raise MIMError(f"MIM expects tokens of shape (B, S+1) with S >= 1, got {tuple(tokens.shape)}")
    if loss_mask is not None and loss_mask.shape != tokens.shape:
        raise MIMError(f"loss_mask shape {tuple(loss_mask.shape)} must equal tokens shape {tuple(tokens.shape)}")


def _target_mask(targets: torch.Tensor, token_mask: Optional[torch.Tensor], pad_id: Optional[int]) -> torch.Tensor:
    mask = torch.ones(targets.shape, dtype=torch.float32, device=targets.device)
    if token_mask is not None:
        mask = mask * token_mask.to(torch.float32)
    if pad_id is not None:
        mask = mask * (targets != pad_id).to(torch.float32)
    return mask


def mim_forward_batch(tokens: torch.Tensor, loss_mask: Optional[torch.Tensor], l2r_id: int,
                      pad_id: Optional[int] = None) -> dict:
    """Forward rows only (left-to-right evaluation and generation): ``input_ids``/``labels``/``loss_mask``/
    ``position_ids`` (B, S), same layout as the first half of ``mim_batch``."""
    _check(tokens, loss_mask)
    S = tokens.shape[1] - 1
    targets = tokens[:, :S]  # (B, S): t_0 .. t_{S-1}
    sentinel = torch.full_like(tokens[:, :1], l2r_id)
    inputs = torch.cat([sentinel, tokens[:, :S - 1]], dim=1)  # (B, S): <l2r>, t_0 .. t_{S-2}
    return {"input_ids": inputs, "labels": targets.clone(),
            "loss_mask": _target_mask(targets, None if loss_mask is None else loss_mask[:, :S], pad_id),
            "position_ids": _positions(inputs)}


def _positions(inputs: torch.Tensor) -> torch.Tensor:
    """(N, S) 0..S-1 per row: each direction's row starts at position 0 with its sentinel."""
    N, S = inputs.shape
    return torch.arange(S, dtype=torch.long, device=inputs.device).unsqueeze(0).expand(N, S).clone()


def mim_batch(tokens: torch.Tensor, loss_mask: Optional[torch.Tensor], l2r_id: int, r2l_id: int,
              pad_id: Optional[int], eod_id: Optional[int]) -> dict:
    """Build the doubled MIM batch from packed samples ``tokens`` (B, S+1) (layout in the module docstring).

    Returns a dict of tensors on ``tokens.device``:
      ``input_ids`` (2B, S) long: rows [0, B) forward, rows [B, 2B) backward -- one model call sees both;
      ``position_ids`` (2B, S) long, 0..S-1 in every row (keys as in ``data.batch.make_batch``);
      ``labels`` (2B, S) long; ``loss_mask`` (2B, S) float32;
      ``agree_mask`` (B, S) float32 over forward positions;
      ``align_index`` (S,) long: forward position i <-> backward position ``align_index[i]`` (same target);
      ``batch_size``: B (a Python int), used by ``training.losses.split_directions``.
    ``loss_mask`` (B, S+1) or None is the per-token mask ("token j may be a target").
    """
    _check(tokens, loss_mask)
    B, S = tokens.shape[0], tokens.shape[1] - 1
    fwd = mim_forward_batch(tokens, loss_mask, l2r_id, pad_id)
    rev = torch.flip(tokens[:, :S], dims=[1])  # (B, S): t_{S-1} .. t_0
    bwd_inputs = torch.cat([torch.full_like(rev[:, :1], r2l_id), rev[:, :S - 1]], dim=1)  # <r2l>, t_{S-1} .. t_1
    bwd_mask = fwd["loss_mask"].flip(dims=[1])  # the same targets, reversed, so the same mask reversed
    align_index = torch.arange(S - 1, -1, -1, device=tokens.device)
    agree = fwd["loss_mask"] * bwd_mask.index_select(1, align_index)
    if eod_id is not None:
        agree = agree * (fwd["labels"] != eod_id).to(torch.float32)
    return {
        "input_ids": torch.cat([fwd["input_ids"], bwd_inputs], dim=0),
        "position_ids": _positions(torch.cat([fwd["input_ids"], bwd_inputs], dim=0)),
        "labels": torch.cat([fwd["labels"], rev], dim=0),
        "loss_mask": torch.cat([fwd["loss_mask"], bwd_mask], dim=0),
        "agree_mask": agree,
        "align_index": align_index,
        "batch_size": B,
    }
