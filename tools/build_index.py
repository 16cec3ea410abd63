#!/usr/bin/env python
"""`python tools/build_index.py ...`, kept for Megatron-style command lines: the program is
megatron_code/commands/build_index.py, installed as `megatron-code-build-index`."""

import os
import sys

# Run from a checkout without `pip install` (as Megatron-LM's own tools do).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_code.commands.build_index import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
