#!/usr/bin/env python
"""`python tools/train_quality_classifier.py ...`, kept for Megatron-style command lines: the program is
megatron_code/commands/train_quality_classifier.py, installed as `megatron-code-train-quality-classifier`."""

import os
import sys

# Run from a checkout without `pip install` (as Megatron-LM's own tools do).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_code.commands.train_quality_classifier import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
