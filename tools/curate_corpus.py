#!/usr/bin/env python
"""`python tools/curate_corpus.py ...`, kept for Megatron-style command lines: the program is
megatron_code/commands/curate_corpus.py, installed as `megatron-code-curate`."""

import os
import sys

# Run from a checkout without `pip install` (as Megatron-LM's own tools do).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_code.commands.curate_corpus import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
