"""Training objectives as pure functions of (tokens, rng, cfg): FIM (fim.py), MIM batches (mim.py).

Randomness comes only from ``rng.sample_rng(seed, epoch, sample_index)`` so every objective is worker- and
order-independent and resumes exactly.
"""

from .fim import FIMConfig, FIMError, FIMIds, apply_fim, apply_fim_to_document, fim_ids, fim_loss_mask
from .rng import sample_rng

_MIM_NAMES = ("MIMError", "mim_batch", "mim_forward_batch")


def __getattr__(name):
    # mim.py works on torch tensors; fim and rng need numpy only. Importing mim here on first use keeps torch out
    # of the programs that reach fim through this package without training (tools/preprocess_data.py: torch's
    # import is ~2 s of CPU per launch, most of that program's start-up).
    if name in _MIM_NAMES:
        from . import mim
        return getattr(mim, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["FIMConfig", "FIMError", "FIMIds", "apply_fim", "apply_fim_to_document", "fim_ids", "fim_loss_mask",
           "MIMError", "mim_batch", "mim_forward_batch", "sample_rng"]
