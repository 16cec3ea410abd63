"""Where a checkpoint directory keeps the config it was saved with (read by `--load DIR` alone, which resumes the
saved run: config/cli.py). The directory layout is described in docs/formats.md, Checkpoints."""

from __future__ import annotations

import os


def checkpoint_config_path(load_dir: str) -> str | None:
    """The config.yaml a checkpoint directory was saved with: SAVE/<tag named by SAVE/latest>/config.yaml, or
    DIR/config.yaml when DIR is one tag (SAVE/iter_XXXXXXX). None when it holds no checkpoint yet (the Megatron
    convention of --load equal to --save from the first launch on). Layout: docs/formats.md, Checkpoints."""
    if os.path.isfile(os.path.join(load_dir, "config.yaml")):
        return os.path.join(load_dir, "config.yaml")
    try:
        with open(os.path.join(load_dir, "latest")) as f:
            tag = f.read().strip()
    except OSError:
        return None
    path = os.path.join(load_dir, tag, "config.yaml")
    return path if tag and os.path.isfile(path) else None
