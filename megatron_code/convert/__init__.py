"""Checkpoint conversion to and from Hugging Face `transformers` (see hf.py and keymaps.py)."""

from .hf import (ConversionError, UnsupportedArchitecture, export_checkpoint, export_model, import_model,
                 import_to_checkpoint)
from .keymaps import TARGETS, choose_target

__all__ = ["ConversionError", "UnsupportedArchitecture", "export_checkpoint", "export_model", "import_model",
           "import_to_checkpoint", "TARGETS", "choose_target"]
