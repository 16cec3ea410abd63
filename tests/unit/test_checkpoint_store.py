"""The checkpoint store (training/checkpoint.py + ckpt_store.py) with a stand-in engine that writes DeepSpeed-like
files: which tag a load trusts, what it refuses, checksums, fallback, leftovers, tag order, a full disk, the lock.
Issue 14 findings 3, 6 (flipped bytes), 7 (--keep-checkpoints order) and 8 (disk full, damaged shards, meta.json)."""

import errno
import json
import os
import signal
import subprocess
import sys

import pytest

from megatron_code.config.job import JobConfig
from megatron_code.training import checkpoint as ckpt
from megatron_code.training import ckpt_store as store
from megatron_code.training.checkpoint import CheckpointError


class FakeEngine:
    """Writes what DeepSpeed's save_checkpoint would: a model-states file and an optimizer shard per tag."""

    def __init__(self, fail_with: int | None = None):
        self.fail_with = fail_with

    def save_checkpoint(self, root, tag, client_state, save_latest):
        assert save_latest is False
        d = os.path.join(root, tag)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "mp_rank_00_model_states.pt"), "wb") as f:
            f.write(os.urandom(4096))
        if self.fail_with is not None:
            raise OSError(self.fail_with, os.strerror(self.fail_with), os.path.join(d, "zero_pp_rank_0_optim.pt"))
        with open(os.path.join(d, "zero_pp_rank_0_mp_rank_00_optim_states.pt"), "wb") as f:
            f.write(os.urandom(8192))


def save(save_dir, iteration, engine=None, **kw):
    return ckpt.save_checkpoint(engine or FakeEngine(), JobConfig(), str(save_dir), iteration,
                                {"consumed_samples": iteration * 8, "layout": {"tp": 1}}, **kw)


def warnings_of(save_dir, **kw):
    out = []
    root, tag = ckpt.resolve_checkpoint(str(save_dir), full=True, warn=out.append, **kw)
    return tag, out


def test_meta_lists_every_file_with_its_checksum(tmp_path):
    final = save(tmp_path, 3)
    files = json.load(open(os.path.join(final, "meta.json")))["files"]
    assert set(files) == {"mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"}
    assert files["zero_pp_rank_0_mp_rank_00_optim_states.pt"]["size"] == 8192
    assert all(len(r["sha256"]) == 64 for r in files.values())
    assert not os.path.exists(tmp_path / ".staging")


def test_missing_latest_resumes_newest_complete_tag_not_iteration_0(tmp_path):
    """Finding 3: a crash between a tag's rename and the rewrite of `latest` (or a deleted `latest`) must not
    start training from 0 over the existing iter_* directories."""
    for it in (1, 2):
        save(tmp_path, it)
    os.remove(tmp_path / "latest")
    assert ckpt.nothing_to_load(str(tmp_path), str(tmp_path)) is False
    tag, warns = warnings_of(tmp_path)
    assert tag == "iter_0000002"
    assert any("no 'latest' file" in w for w in warns)
    with pytest.raises(CheckpointError, match="require_latest"):
        ckpt.resolve_checkpoint(str(tmp_path), require_latest=True)
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        ckpt.check_fresh_save_dir(str(tmp_path), None)  # no --load: refused, not trained over


def test_empty_save_dir_is_still_a_first_launch(tmp_path):
    assert ckpt.nothing_to_load(str(tmp_path), str(tmp_path)) is True
    assert ckpt.nothing_to_load(str(tmp_path / "new"), str(tmp_path / "new")) is True


def _megatron_lm(d):
    (d / "iter_0000100" / "mp_rank_00").mkdir(parents=True)
    (d / "iter_0000100" / "mp_rank_00" / "model_optim_rng.pt").write_bytes(b"x")
    (d / "latest_checkpointed_iteration.txt").write_text("100")


def _torch_dist(d):
    (d / "iter_0000100").mkdir(parents=True)
    (d / "iter_0000100" / "__0_0.distcp").write_bytes(b"x")
    (d / "iter_0000100" / "metadata.json").write_text("{}")
    (d / "iter_0000100" / "common.pt").write_bytes(b"x")
    (d / "latest_checkpointed_iteration.txt").write_text("100")


def _megatron_deepspeed(d):
    (d / "global_step100").mkdir(parents=True)
    (d / "global_step100" / "mp_rank_00_model_states.pt").write_bytes(b"x")
    (d / "latest").write_text("global_step100")


def _ds_universal(d):
    (d / "zero" / "embed.weight").mkdir(parents=True)
    (d / "zero" / "embed.weight" / "fp32.pt").write_bytes(b"x")
    (d / "mp_rank_00_model_states.pt").write_bytes(b"x")


def _hf(d):
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"x")


def _unknown(d):
    d.mkdir(parents=True, exist_ok=True)
    (d / "weights.pt").write_bytes(b"x")


@pytest.mark.parametrize("make,words", [
    (_megatron_lm, ["Megatron-LM", "--from megatron-lm"]),
    (_torch_dist, ["torch_dist", "--from megatron-lm"]),
    (_megatron_deepspeed, ["Megatron-DeepSpeed", "--from megatron-deepspeed"]),
    (_ds_universal, ["DeepSpeed universal", "--universal-checkpoint", "--from ds-universal"]),
    (_hf, ["Hugging Face", "--from hf"]),
    (_unknown, ["unknown format", "convert_checkpoint.py"]),
])
def test_foreign_checkpoints_are_refused_naming_format_and_converter(tmp_path, make, words):
    """Finding 3: `--load X --save X` on another trainer's checkpoint started from scratch and wrote into it."""
    d = tmp_path / "ck"
    make(d)
    for call in (lambda: ckpt.nothing_to_load(str(d), str(d)), lambda: ckpt.check_fresh_save_dir(str(d), None),
                 lambda: ckpt.check_fresh_save_dir(str(tmp_path / "other"), str(d)),
                 lambda: ckpt.resolve_checkpoint(str(d))):
        with pytest.raises(CheckpointError) as err:
            call()
        msg = str(err.value)
        assert all(w in msg for w in words) and "\n" not in msg, msg


def test_flipped_byte_falls_back_to_previous_intact_checkpoint(tmp_path):
    """Finding 6: flipped bytes in a checkpoint loaded silently."""
    save(tmp_path, 1)
    final = save(tmp_path, 2)
    shard = os.path.join(final, "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    data = bytearray(open(shard, "rb").read())
    data[100] ^= 0x01
    open(shard, "wb").write(bytes(data))
    tag, warns = warnings_of(tmp_path)
    assert tag == "iter_0000001"
    assert any("iter_0000002 is damaged" in w and "SHA-256" in w for w in warns), warns
    with pytest.raises(CheckpointError, match="is damaged"):  # named explicitly: refused, never swapped
        ckpt.resolve_checkpoint(final, full=True)
    # The cheap check (sizes only) used to read a config does not hash.
    assert ckpt.resolve_checkpoint(str(tmp_path), full=False)[1] == "iter_0000002"


@pytest.mark.parametrize("damage", ["truncate", "delete", "corrupt_meta", "meta_not_object"])
def test_damaged_shards_or_meta_fall_back_loudly(tmp_path, damage):
    """Finding 8: truncated/missing shards and a corrupt meta.json gave tracebacks, no fallback."""
    save(tmp_path, 1)
    final = save(tmp_path, 2)
    shard = os.path.join(final, "mp_rank_00_model_states.pt")
    if damage == "truncate":
        os.truncate(shard, 100)
    elif damage == "delete":
        os.remove(shard)
    elif damage == "corrupt_meta":
        open(os.path.join(final, "meta.json"), "w").write('{"iteration": 2, "fil')
    else:
        open(os.path.join(final, "meta.json"), "w").write("[1, 2]")
    tag, warns = warnings_of(tmp_path)
    assert tag == "iter_0000001"
    assert any("WARNING" in w and "iter_0000002" in w for w in warns)
    os.remove(os.path.join(tmp_path, "iter_0000001", "config.yaml"))
    with pytest.raises(CheckpointError, match="holds no intact checkpoint") as err:
        ckpt.resolve_checkpoint(str(tmp_path), full=True, warn=lambda m: None)
    assert "\n" not in str(err.value)
    if damage == "corrupt_meta":
        with pytest.raises(CheckpointError, match="meta.json is not valid JSON"):
            ckpt.load_job_config(final)


def test_keep_checkpoints_sorts_tags_numerically(tmp_path):
    """Finding 7: tags sorted as strings made --keep-checkpoints delete the newest once past iteration 10^7."""
    for it in (9_999_998, 9_999_999, 10_000_000):
        save(tmp_path, it, keep=2)
    assert store.list_tags(str(tmp_path)) == ["iter_9999999", "iter_10000000"]
    assert store.read_latest(str(tmp_path)) == "iter_10000000"
    assert warnings_of(tmp_path)[0] == "iter_10000000"


@pytest.mark.parametrize("code,words", [(errno.ENOSPC, "no space left on device"),
                                        (errno.EDQUOT, "disk quota exceeded")])
def test_full_disk_says_so_with_path_and_bytes(tmp_path, code, words):
    """Finding 8: a full disk ended in a traceback that never said 'no space left'."""
    save(tmp_path, 1)
    with pytest.raises(CheckpointError) as err:
        save(tmp_path, 2, engine=FakeEngine(fail_with=code))
    msg = str(err.value)
    assert words in msg and str(tmp_path) in msg and "bytes are free" in msg and "iter_0000001" in msg, msg
    needed = store.checkpoint_bytes(str(tmp_path / "iter_0000001"))
    assert f"{needed:,} bytes" in msg
    assert store.read_latest(str(tmp_path)) == "iter_0000001"
    assert not os.path.exists(tmp_path / ".staging")


def test_publish_if_refusal_publishes_nothing(tmp_path):
    """The hook the non-finite guard uses: 'latest' never moves to a refused checkpoint."""
    save(tmp_path, 1)
    seen = []
    assert save(tmp_path, 2, publish_if=lambda staged: seen.append(staged) or "weights are not finite") is None
    assert seen and seen[0].endswith(os.path.join(".staging", "iter_0000002"))
    assert store.read_latest(str(tmp_path)) == "iter_0000001"
    assert store.list_tags(str(tmp_path)) == ["iter_0000001"]
    assert not os.path.exists(tmp_path / ".staging")
    assert save(tmp_path, 3, publish_if=lambda staged: None).endswith("iter_0000003")


def test_lock_refuses_a_second_writer_and_cleans_leftovers(tmp_path):
    (tmp_path / ".staging" / "iter_0000009").mkdir(parents=True)
    (tmp_path / "latest.tmp-4242").write_text("iter_0000009")
    (tmp_path / "latest.tmp4242").write_text("iter_0000009")  # older versions' temporary name
    lock = ckpt.lock_save_dir(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [".lock"]
    with pytest.raises(CheckpointError, match=f"being written by another job \\(pid {os.getpid()}"):
        ckpt.lock_save_dir(str(tmp_path))
    lock.release()
    ckpt.lock_save_dir(str(tmp_path)).release()


def test_lock_dies_with_a_killed_holder(tmp_path):
    """Unlike a PID file, the flock is released by the kernel when its holder is SIGKILLed."""
    code = ("import sys, time; from megatron_code.training.ckpt_store import SaveDirLock; "
            f"lock = SaveDirLock({str(tmp_path)!r}); print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CheckpointError, match="another job"):
            store.SaveDirLock(str(tmp_path))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    store.SaveDirLock(str(tmp_path)).release()


def test_atomic_open_leaves_old_file_or_new_never_a_part(tmp_path):
    from megatron_code.utils import atomic

    path = str(tmp_path / "f.txt")
    atomic.write_text(path, "old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_open(path, "w") as f:
            f.write("half of the new")
            raise RuntimeError("killed mid-write")
    assert open(path).read() == "old" and os.listdir(tmp_path) == ["f.txt"]
    atomic.write_bytes(path, b"new")
    assert open(path).read() == "new" and os.listdir(tmp_path) == ["f.txt"]
    assert atomic.is_leftover(atomic.tmp_path(path)) and not atomic.is_leftover(path)
    with pytest.raises(ValueError):
        atomic.atomic_open(path, "a").__enter__()
