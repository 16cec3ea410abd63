"""The checkpoint directory and start-up from the command line (issue 14 findings 2 and 3): a relaunch after a kill
during start-up, a lost `latest`, another trainer's checkpoint, two jobs on one --save."""

import os
import re
import signal
import subprocess
import sys

import pytest

from megatron_code.training.ckpt_store import SaveDirLock

from ._cmd import ROOT, TINY, env, run

pytestmark = pytest.mark.e2e


def test_relaunch_after_sigkill_during_startup_compiles_nothing_and_trains(tmp_path):
    """Finding 2: DeepSpeed JIT-built its shm comm op at every launch under a file lock in TORCH_EXTENSIONS_DIR;
    a process killed while holding it left the lock, and every relaunch within 5 minutes waited on it forever.
    Here the lock a killed builder leaves is planted, a launch is SIGKILLed during start-up, and the immediate
    relaunch must train without touching the extensions directory (nothing compiled, no lock waited on)."""
    ext = tmp_path / "torch_extensions"
    (ext / "deepspeed_shm_comm").mkdir(parents=True)
    (ext / "deepspeed_shm_comm" / "lock").write_text("")  # as left by a builder killed mid-build
    e = dict(env(), TORCH_EXTENSIONS_DIR=str(ext))
    save = str(tmp_path / "run")
    cmd = [sys.executable, os.path.join(ROOT, "pretrain_code.py")] + TINY + ["--train-iters", "2", "--save", save,
                                                                              "--load", save]
    first = subprocess.Popen(cmd, cwd=ROOT, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first.stdout.readline()  # it has started (imports done, output flowing): kill it mid start-up
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
        first.stdout.close()
    relaunch = subprocess.run(cmd, cwd=ROOT, env=e, capture_output=True, text=True, timeout=600)
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    assert re.search(r"iteration\s+2/\s*2 ", relaunch.stdout), relaunch.stdout[-2000:]
    assert sorted(os.listdir(ext)) == ["deepspeed_shm_comm"]
    assert os.listdir(ext / "deepspeed_shm_comm") == ["lock"]  # nothing built, nothing loaded


def test_lost_latest_resumes_from_newest_complete_checkpoint(tmp_path):
    """Finding 3: `--load X --save X` with `latest` missing trained from iteration 0 over the old iter_*."""
    save = str(tmp_path / "run")
    run(TINY + ["--train-iters", "4", "--save", save, "--save-interval", "1", "--exit-interval", "2"])
    os.remove(os.path.join(save, "latest"))
    out = run(TINY + ["--train-iters", "3", "--save", save, "--load", save])
    assert "resumed from" in out.stdout and "at iteration 2" in out.stdout, out.stdout
    assert "no 'latest' file" in out.stderr
    assert open(os.path.join(save, "latest")).read().strip() == "iter_0000003"
    os.remove(os.path.join(save, "latest"))
    refused = run(TINY + ["--train-iters", "4", "--save", save, "--load", save, "--training.require_latest",
                          "true"], check=False)
    assert refused.returncode == 2 and "require_latest" in refused.stderr, refused.stderr[-2000:]


def test_megatron_lm_checkpoint_is_refused_in_one_line(tmp_path):
    """Finding 3: the same command on a Megatron-LM checkpoint started from scratch and wrote into it."""
    d = tmp_path / "megatron"
    (d / "iter_0000100" / "mp_rank_00").mkdir(parents=True)
    (d / "iter_0000100" / "mp_rank_00" / "model_optim_rng.pt").write_bytes(b"\0" * 64)
    (d / "latest_checkpointed_iteration.txt").write_text("100")
    before = sorted(os.listdir(d))
    out = run(TINY + ["--train-iters", "2", "--save", str(d), "--load", str(d)], check=False)
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Megatron-LM" in errors[0] and "convert_checkpoint.py --from megatron-lm" in errors[0]
    assert "Traceback" not in out.stderr
    assert sorted(os.listdir(d)) == before  # nothing written into it (not even the lock)


def test_second_job_on_the_same_save_directory_is_refused(tmp_path):
    save = tmp_path / "run"
    lock = SaveDirLock(str(save))  # this process plays the job already writing --save
    try:
        out = run(TINY + ["--train-iters", "1", "--save", str(save)], check=False)
    finally:
        lock.release()
    assert out.returncode == 2 and "being written by another job" in out.stderr, out.stderr[-2000:]
    assert f"pid {os.getpid()}" in out.stderr


def _torchrun() -> list[str]:
    import sysconfig

    from megatron_code.testing import free_port

    port = free_port()
    tr = os.path.join(sysconfig.get_path("scripts"), "torchrun")
    return ([sys.executable, tr] if os.path.exists(tr) else [sys.executable, "-m", "torch.distributed.run"]) + [
        "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port)]


def test_dp2_resume_skips_a_damaged_latest_on_every_rank(tmp_path):
    """Rank 0 verifies the checksums and tells the others which tag to load: with flipped bytes in the newest
    checkpoint both ranks resume from the previous one (a rank loading another tag would diverge or hang)."""
    save = str(tmp_path / "run")
    run(TINY + ["--train-iters", "3", "--save", save, "--save-interval", "1", "--exit-interval", "2"],
        launcher=_torchrun())
    shard = sorted(f for f in os.listdir(os.path.join(save, "iter_0000002")) if f.endswith(".pt"))[0]
    path = os.path.join(save, "iter_0000002", shard)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x40
    open(path, "wb").write(bytes(data))
    out = run(TINY + ["--train-iters", "3", "--save", save, "--load", save], launcher=_torchrun())
    assert "iter_0000002 is damaged" in out.stderr and "SHA-256" in out.stderr, out.stderr[-2000:]
    assert "at iteration 1" in out.stdout, out.stdout[-2000:]
    assert open(os.path.join(save, "latest")).read().strip() == "iter_0000003"
