"""Atomic file writes: a reader sees the old file or the complete new one, never a part, even across a crash.

The recipe (POSIX rename is atomic within a file system): write `PATH.tmp-<pid>` beside the target, flush and
fsync it, `os.replace` it over PATH, then fsync the directory so the rename itself survives a power loss. Without
the fsyncs a crash right after the rename can leave PATH empty on ext4/xfs (data written back after the metadata).

The temporary name carries the writer's pid so two writers never share one, and `is_leftover` recognises the
names a killed writer leaves so their owners (checkpoint store, index caches) can clean them up.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import IO, Iterator

_TMP = re.compile(r"\.tmp-\d+$")


def tmp_path(path: str) -> str:
    """The temporary name used for `path` by this process."""
    return f"{path}.tmp-{os.getpid()}"


def is_leftover(name: str) -> bool:
    """True for a temporary name made by tmp_path (left behind when its writer was killed)."""
    return bool(_TMP.search(name))


def fsync_dir(path: str) -> None:
    """Make the directory entries of `path` (renames, creations) durable."""
    fd = os.open(path or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace(tmp: str, path: str, sync_dir: bool = True) -> None:
    """fsync the finished file `tmp`, rename it over `path`, then fsync the directory."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if sync_dir:
        fsync_dir(os.path.dirname(os.path.abspath(path)))


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs) -> Iterator[IO]:
    """`with atomic_open(p, "w") as f: f.write(...)`: PATH appears complete when the block ends, or not at all
    (the temporary file is removed when the block raises)."""
    if mode not in ("w", "wb", "wt"):
        raise ValueError(f"atomic_open writes a whole new file: mode must be 'w' or 'wb', not {mode!r}")
    tmp = tmp_path(path)
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def publish_tag(save_dir: str, staged: str, tag: str, pointers: dict[str, str] | None = None) -> str:
    """The last step of writing a checkpoint tag staged in a directory of its own (SAVE/.staging/TAG): rename it
    to SAVE/TAG, make the rename durable, then write the pointer files (default: SAVE/latest = TAG, DeepSpeed's and
    ours; Megatron-LM's is latest_checkpointed_iteration.txt = the iteration). A reader sees the previous tag until
    the pointers move, and never a partial directory. Returns SAVE/TAG."""
    final = os.path.join(save_dir, tag)
    os.rename(staged, final)
    fsync_dir(save_dir)
    for name, text in (pointers if pointers is not None else {"latest": tag}).items():
        write_text(os.path.join(save_dir, name), text)
    return final


def write_text(path: str, text: str, encoding: str = "utf-8") -> None:
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)


def write_bytes(path: str, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)
