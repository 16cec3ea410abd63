"""DeepSpeed universal checkpoints <-> ours (tools/convert_checkpoint.py --from/--to ds-universal). The format code
lives in parallel/universal.py, below training/, whose --universal-checkpoint loading uses it too."""

from ..parallel.universal import (UniversalCheckpointError, find_universal, read_ds_universal,  # noqa: F401
                                  universal_info, write_ds_universal)
