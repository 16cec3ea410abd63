"""Functional entry points that pick a fused implementation (flash-attn, Triton) or the pure-PyTorch reference.

Each op lives in its own folder: reference.py (the spec and test oracle), function.py (dispatch), and kernel.py for
fused implementations when they exist."""

from .attention.function import attention
from .linear_cross_entropy.function import linear_cross_entropy
from .rotary.function import rotary

__all__ = ["attention", "linear_cross_entropy", "rotary"]
