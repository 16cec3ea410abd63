"""The checkpoint directory: which tag to trust, what is not ours, integrity, leftovers, and who may write it.

What training/checkpoint.py writes into `--save` (see its docstring) is checked here when it is read back:

- Tags are `iter_<N>` and are ordered by N (as numbers: `iter_10000000` is newer than `iter_9999999`).
- `latest` names the tag to resume. When it is missing (a crash between a checkpoint's rename and the rewrite of
  `latest`, or a user deleting it) the newest *complete* tag is resumed with a loud warning, unless
  training.require_latest asks to refuse. Never: training from iteration 0 over existing `iter_*` directories.
- meta.json records every file of the tag with its size and SHA-256 (`files`, utils/checksums.py); a load
  verifies them. A damaged tag (missing/truncated/flipped file, unreadable meta.json) is skipped for the previous
  intact one, loudly; a tag named explicitly (`--load SAVE/iter_N`) is refused instead.
- Checkpoints of other trainers (Megatron-LM legacy and torch_dist, Megatron-DeepSpeed, Hugging Face) are refused
  with one line naming the format and the converter.
- `SAVE/.lock` is held with flock(2) by the job writing the directory: the kernel drops it when the holder dies
  (SIGKILL included), so it never goes stale, and a second job writing the same directory is refused.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import socket
import sys
import time
from typing import Any

from ..config.base import ConfigError
from ..utils import atomic
from ..utils.checksums import META, file_records, sha256_file

STAGING = ".staging"
LOCK_FILE = ".lock"
_TAG = re.compile(r"^iter_(\d+)$")
CONVERTER = "tools/convert_checkpoint.py"


class CheckpointError(ConfigError):
    """A checkpoint cannot be used as asked (missing, corrupt, other architecture or tokenizer)."""


def tag_iteration(name: str) -> int | None:
    m = _TAG.match(name)
    return int(m.group(1)) if m else None


def list_tags(ckpt_dir: str) -> list[str]:
    """Our tag directories in `ckpt_dir`, oldest first (by iteration number, not by name)."""
    try:
        names = os.listdir(ckpt_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    tags = [n for n in names if tag_iteration(n) is not None and os.path.isdir(os.path.join(ckpt_dir, n))]
    return sorted(tags, key=tag_iteration)


def is_ours(tag_dir: str) -> bool:
    return any(os.path.exists(os.path.join(tag_dir, f)) for f in (META, "config.yaml"))


def read_latest(ckpt_dir: str) -> str | None:
    path = os.path.join(ckpt_dir, "latest")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return f.read().strip() or None


# ---------------------------------------------------------------------------------------------- other trainers
def _has(path: str, pattern: str) -> bool:
    try:
        return any(re.match(pattern, n) for n in os.listdir(path))
    except OSError:
        return False


def foreign_format(ckpt_dir: str) -> tuple[str, str] | None:
    """(format name, how to convert it) when `ckpt_dir` (or the tag directory given) holds a checkpoint written
    by another trainer; None when it holds ours or nothing recognisable as a checkpoint."""
    d = ckpt_dir
    if not os.path.isdir(d):
        return None
    names = os.listdir(d)
    ours = [n for n in list_tags(d) if is_ours(os.path.join(d, n))]
    if ours or is_ours(d):
        return None
    # A tag directory given directly is judged by its own contents, a save directory by its tags'.
    subdirs = [os.path.join(d, n) for n in names if os.path.isdir(os.path.join(d, n))]
    tag_dirs = [d] + subdirs
    from_megatron = f"`{CONVERTER} --from megatron-lm --load {d} --save NEW_DIR`"
    torch_dist = ("Megatron-LM torch_dist (distributed checkpoint)",
                  f"convert it (weights, Adam and RNG state) with {from_megatron}")
    if "latest_universal" in names or (os.path.isdir(os.path.join(d, "zero")) and _has(d, r"^mp_rank_\d\d_model_"
                                                                                          r"states\.pt$")):
        return ("DeepSpeed universal", "load it with --universal-checkpoint (or convert it with "
                f"`{CONVERTER} --from ds-universal --load {d} --save NEW_DIR`)")
    if any(_has(t, r".*\.distcp$") for t in tag_dirs) or any(_has(t, r"^common\.pt$") for t in tag_dirs):
        return torch_dist
    if any(_has(t, r"^mp_rank_\d\d(_\d\d\d)?$") for t in tag_dirs) or "latest_checkpointed_iteration.txt" in names:
        return "Megatron-LM (iter_N/mp_rank_XX/model_optim_rng.pt)", f"convert it with {from_megatron}"
    latest = read_latest(d) if "latest" in names else None
    if any(re.match(r"^global_step\d+$", n) for n in names) or (latest or "").startswith("global_step") \
            or _has(d, r"^(mp_rank_\d\d_model_states|layer_\d\d-model_\d\d-model_states)\.pt$"):
        return ("Megatron-DeepSpeed (global_stepN/...model_states.pt)",
                f"convert it with `{CONVERTER} --from megatron-deepspeed --load {d} --save NEW_DIR`")
    if "config.json" in names and any(n.endswith((".safetensors", ".bin")) or n.endswith(".index.json")
                                      for n in names):
        return "Hugging Face transformers", f"convert it with `{CONVERTER} --from hf --load {d} --save NEW_DIR`"
    if any(re.match(r".*\.(pt|pth|bin|safetensors|ckpt|distcp)$", n) for n in names) \
            or any(_has(s, r".*\.(pt|pth|bin|safetensors|distcp)$") for s in subdirs):
        return ("an unknown format (not a megatron_code checkpoint)",
                f"{CONVERTER} converts Megatron-LM and Hugging Face checkpoints (docs/checkpoints.md)")
    return None


def refuse_foreign(ckpt_dir: str, flag: str) -> None:
    found = foreign_format(ckpt_dir)
    if found:
        name, how = found
        if flag == "--load":
            raise CheckpointError(f"--load {ckpt_dir} holds a {name} checkpoint, not a megatron_code one: {how}, "
                                  f"and pass --load NEW_DIR")
        raise CheckpointError(f"--save {ckpt_dir} holds a {name} checkpoint: choose an empty --save directory (to "
                              f"train on from it: {how}, and pass --load NEW_DIR)")


# ---------------------------------------------------------------------------------------------- integrity
def read_meta(tag_dir: str) -> dict[str, Any]:
    path = os.path.join(tag_dir, META)
    if not os.path.exists(path):
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}): the checkpoint is damaged") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} holds {type(meta).__name__}, not a JSON object: the checkpoint is damaged")
    return meta


def problems(tag_dir: str, full: bool = True) -> list[str]:
    """Why `tag_dir` cannot be trusted (empty when it can). full=False checks presence and sizes only."""
    try:
        meta = read_meta(tag_dir)
    except CheckpointError as exc:
        return [str(exc)]
    if not os.path.exists(os.path.join(tag_dir, "config.yaml")):
        return [f"{tag_dir}/config.yaml is missing"]
    out = []
    for rel, rec in (meta.get("files") or {}).items():
        path = os.path.join(tag_dir, rel)
        if not os.path.isfile(path):
            out.append(f"{rel} is missing")
        elif os.path.getsize(path) != rec.get("size"):
            out.append(f"{rel} has {os.path.getsize(path)} bytes, {rec.get('size')} were saved (truncated?)")
        elif full and sha256_file(path) != rec.get("sha256"):
            out.append(f"{rel} does not match its SHA-256 in meta.json (changed or corrupted bytes)")
    return out


def select_tag(ckpt_dir: str, require_latest: bool = False, full: bool = True) -> tuple[str, list[str]]:
    """(tag to load, warnings to print) for a save directory: `latest` when intact, else the previous intact tag;
    the newest intact tag when `latest` is missing (unless require_latest)."""
    refuse_foreign(ckpt_dir, "--load")
    tags = list_tags(ckpt_dir)
    latest = read_latest(ckpt_dir)
    warnings: list[str] = []
    if latest is None:
        if not tags:
            raise CheckpointError(f"{ckpt_dir} holds no checkpoint (no 'latest' file, no iter_* directory): check "
                                  f"--load (pass the directory given to --save, or SAVE/iter_XXXXXXX)")
        if require_latest:
            raise CheckpointError(f"{ckpt_dir} has no 'latest' file (newest tag: {tags[-1]}); with "
                                  f"training.require_latest pass --load {ckpt_dir}/{tags[-1]} explicitly, or "
                                  f"drop --training.require_latest to resume from the newest complete checkpoint")
        candidates = tags[::-1]
        warnings.append(f"WARNING: {ckpt_dir} has no 'latest' file (a crash between a save and its pointer "
                        f"update?): resuming from the newest complete checkpoint instead")
    else:
        if tag_iteration(latest) is None or latest not in tags:
            warnings.append(f"WARNING: {ckpt_dir}/latest names '{latest}', which is missing: falling back to the "
                            f"newest complete checkpoint before it")
        n = tag_iteration(latest)
        candidates = [t for t in tags[::-1] if n is None or tag_iteration(t) <= n]
    for tag in candidates:
        bad = problems(os.path.join(ckpt_dir, tag), full=full)
        if not bad:
            if warnings and (latest is None or tag != latest):
                warnings.append(f"WARNING: resuming from {ckpt_dir}/{tag}")
            return tag, warnings
        warnings.append(f"WARNING: checkpoint {ckpt_dir}/{tag} is damaged and skipped: {'; '.join(bad[:3])}"
                        + (f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""))
    raise CheckpointError(f"{ckpt_dir} holds no intact checkpoint: " + " | ".join(w.removeprefix("WARNING: ")
                                                                                    for w in warnings))


def checkpoint_bytes(tag_dir: str) -> int:
    total = 0
    for root, _, files in os.walk(tag_dir):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def no_space_error(save_dir: str, staged: str, exc: OSError) -> CheckpointError:
    """The one-line error for a full disk (or quota) during a save: where, how much it needs, how much is free."""
    previous = [t for t in list_tags(save_dir) if is_ours(os.path.join(save_dir, t))]
    written = checkpoint_bytes(staged) if os.path.isdir(staged) else 0
    needed = checkpoint_bytes(os.path.join(save_dir, previous[-1])) if previous else 0
    try:
        free = shutil.disk_usage(save_dir).free
    except OSError:
        free = 0
    need = (f"about {needed:,} bytes (the size of {previous[-1]})" if needed > written
            else f"more than the {written:,} bytes written before it ran out")
    what = "no space left on device" if exc.errno == errno.ENOSPC else "disk quota exceeded"
    return CheckpointError(f"{what} while saving a checkpoint into {save_dir} ({exc.filename or staged}): it needs "
                           f"{need}, {free:,} bytes are free. Free space or pass another --save; the previous "
                           f"checkpoint and 'latest' are intact")


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


# ---------------------------------------------------------------------------------------------- one writer
class SaveDirLock:
    """flock(2) on SAVE/.lock for the life of this object (or process). The kernel releases it when the holder
    exits however it exits, so a killed job never blocks the next; the file's text only says who holds it."""

    def __init__(self, save_dir: str):
        os.makedirs(save_dir, exist_ok=True)
        self.path = os.path.join(save_dir, LOCK_FILE)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(self.fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            self.fd = -1
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise CheckpointError(f"--save {save_dir} is being written by another job ({holder}): wait for it "
                                      f"to end, or choose another --save directory") from None
            raise
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, (f"pid {os.getpid()} on {socket.gethostname()} since "
                            f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)[:300]}\n").encode(), 0)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = -1

    def __del__(self):
        self.release()


def clean_leftovers(save_dir: str) -> list[str]:
    """Remove what an interrupted save of ours left in `save_dir` (the staging tree, temporary files). Call only
    while holding the SaveDirLock: then no other job is writing them."""
    removed = []
    staging = os.path.join(save_dir, STAGING)
    if os.path.isdir(staging):
        shutil.rmtree(staging, ignore_errors=True)
        removed.append(staging)
    for name in os.listdir(save_dir) if os.path.isdir(save_dir) else []:
        if atomic.is_leftover(name) or re.match(r"^latest\.tmp\d+$", name):  # the second: older versions' name
            path = os.path.join(save_dir, name)
            if os.path.isfile(path):
                os.remove(path)
                removed.append(path)
    return removed


def prune(save_dir: str, keep: int) -> list[str]:
    """Delete all but the `keep` newest tags (by iteration number). Returns the deleted tags."""
    tags = list_tags(save_dir)
    old = tags[:-keep] if keep > 0 else []
    for tag in old:
        shutil.rmtree(os.path.join(save_dir, tag), ignore_errors=True)
    return old


def write_meta(tag_dir: str, meta: dict[str, Any]) -> None:
    atomic.write_text(os.path.join(tag_dir, META), json.dumps({**meta, "files": file_records(tag_dir)}, indent=2))
