#!/usr/bin/env python
"""`python tools/evaluate_humaneval.py ...`, kept for Megatron-style command lines: the program is
megatron_code/commands/evaluate_humaneval.py, installed as `megatron-code-evaluate-humaneval`."""

import os
import sys

# Run from a checkout without `pip install` (as Megatron-LM's own tools do).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_code.commands.evaluate_humaneval import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
