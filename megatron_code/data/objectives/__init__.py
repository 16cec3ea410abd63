"""Training objectives as pure functions of (tokens, rng, cfg): FIM (fim.py), MIM batches (mim.py).

Randomness comes only from ``rng.sample_rng(seed, epoch, sample_index)`` so every objective is worker- and
order-independent and resumes exactly.
"""

from .fim import FIMConfig, FIMError, FIMIds, apply_fim, apply_fim_to_document, fim_ids, fim_loss_mask
from .mim import MIMError, mim_batch, mim_forward_batch
from .rng import sample_rng

__all__ = ["FIMConfig", "FIMError", "FIMIds", "apply_fim", "apply_fim_to_document", "fim_ids", "fim_loss_mask",
           "MIMError", "mim_batch", "mim_forward_batch", "sample_rng"]
