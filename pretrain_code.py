#!/usr/bin/env python
"""Entry point: `python|torchrun|deepspeed|srun python pretrain_code.py [--preset NAME] [--config FILE]
[--section.key VALUE ...] [Megatron flags ...]`. See README.md."""

import sys

from megatron_code.cli_main import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
