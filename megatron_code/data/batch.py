"""Turn a batch of packed samples into model inputs (Megatron's get_batch / get_ltor_masks_and_position_ids)."""

from __future__ import annotations

import torch


def make_batch(tokens: torch.Tensor, eod: int, eod_mask_loss: bool = False,
               reset_position_ids: bool = False, reset_attention_mask: bool = False) -> dict:
    """``tokens`` (B, S+1) int -> ``input_ids`` (B, S), ``labels`` (B, S) (inputs shifted by one),
    ``loss_mask`` float (B, S), ``position_ids`` (B, S) int64[, ``document_ids`` (B, S) int64 and
    ``attention_mask`` bool (B, 1, S, S)].

    ``eod_mask_loss``: no loss where the *input* token is EOD (predicting across a document boundary).
    ``reset_position_ids``: positions restart at 0 after every EOD input token (each packed document starts at
    position 0). ``reset_attention_mask``: adds ``attention_mask`` (True = may attend), True where query and key
    lie in the same document; an EOD belongs to the document it ends (Megatron's get_ltor_masks_and_position_ids).
    Causality is applied by the attention itself. Without it, attention spans the whole packed sample (Megatron's
    default).
    """
    if tokens.dim() != 2 or tokens.size(1) < 2:
        raise ValueError(f"tokens must be (batch, seq_length + 1), got shape {tuple(tokens.shape)}")
    tokens = tokens.long()
    input_ids = tokens[:, :-1].contiguous()  # (B, S)
    labels = tokens[:, 1:].contiguous()  # (B, S)
    B, S = input_ids.shape
    loss_mask = torch.ones((B, S), dtype=torch.float32, device=tokens.device)
    is_eod = input_ids == eod  # (B, S)
    if eod_mask_loss:
        loss_mask[is_eod] = 0.0
    position_ids = torch.arange(S, dtype=torch.long, device=tokens.device).unsqueeze(0).expand(B, S)
    if reset_position_ids:
        # A new document starts right after an EOD: start[b, t] = t if input[b, t-1] is EOD else 0, then a
        # running max gives the start of the document containing t.
        starts = torch.zeros((B, S), dtype=torch.long, device=tokens.device)
        starts[:, 1:] = torch.where(is_eod[:, :-1], position_ids[:, 1:], torch.zeros_like(position_ids[:, 1:]))
        starts = torch.cummax(starts, dim=1).values
        position_ids = position_ids - starts
    else:
        position_ids = position_ids.clone()
    batch = {"input_ids": input_ids, "labels": labels, "loss_mask": loss_mask, "position_ids": position_ids}
    if reset_attention_mask:
        doc = torch.zeros((B, S), dtype=torch.long, device=tokens.device)  # document index of every position
        doc[:, 1:] = torch.cumsum(is_eod[:, :-1].long(), dim=1)
        batch["document_ids"] = doc  # (B, S): what pipeline stages pass on (the mask is S x larger)
        batch["attention_mask"] = document_attention_mask(doc)
    return batch


def document_attention_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """(B, S) document index of each position -> bool (B, 1, S, S), True where query and key share a document."""
    return (document_ids[:, :, None] == document_ids[:, None, :]).unsqueeze(1)
