"""What a checkpoint's training objective means for left-to-right generation, so no caller has to remember a flag.

- causal and FIM models continue a prompt as it is (FIM training keeps plain left-to-right documents: StarCoder /
  SantaCoder semantics; infilling with sentinels is tools/infill.py);
- MIM models read left to right only after their direction token: the forward rows of training start with
  ``<l2r>`` (data/objectives/mim.py, ``mim_forward_batch``), so every prompt is prefixed with it.

``load_for_inference`` records the checkpoint's objective on the model (``model.objective``); ``generate`` and
``contrastive_search`` (given a tokenizer) prefix prompts with :func:`prompt_lead` themselves.
"""

from __future__ import annotations

from .sampling import GenerationError

OBJECTIVES_WITH_LEAD = {"mim": "<l2r>"}


def objective_of(model) -> str:
    """The objective recorded on a model by load_for_inference ("causal" for a model built in code)."""
    return getattr(model, "objective", None) or "causal"


def lead_token(objective: str) -> str | None:
    """The special token left-to-right prompts of this objective start with (None: none)."""
    return OBJECTIVES_WITH_LEAD.get(objective)


def prompt_lead(model, tokenizer) -> list[int]:
    """Token ids every left-to-right prompt of `model` starts with: [<l2r>] for MIM, [] otherwise."""
    token = lead_token(objective_of(model))
    if token is None:
        return []
    tid = tokenizer.special_tokens.get(token) if hasattr(tokenizer, "special_tokens") else None
    if tid is None:
        raise GenerationError(f"this {objective_of(model)} checkpoint generates after {token}, but its tokenizer has "
                              f"no {token} token: it does not belong to the model")
    return [tid]


__all__ = ["objective_of", "lead_token", "prompt_lead"]
