"""The C++ sample-index builder under AddressSanitizer: csrc/helpers.cpp is compiled with -fsanitize=address into a
temporary module and driven, in a process with the sanitizer preloaded, through every thread split, block size,
SIMD and table choice on edge inputs (no sizes, no documents, out-of-range indices, negative and 16-bit-escaping
lengths, blocks over 2^32 tokens); every result must equal the numpy twin and no access may leave its buffer. This
catches out-of-bounds reads that return plausible values, which no comparison of results can."""

import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _runtime(compiler: str, name: str) -> str | None:
    out = subprocess.run([compiler, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return out if os.path.isabs(out) and os.path.exists(out) else None


@pytest.mark.skipif(sys.platform != "linux", reason="AddressSanitizer preloading is set up for Linux")
def test_sample_index_has_no_out_of_bounds_access(tmp_path):
    pybind11 = pytest.importorskip("pybind11")
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("no g++ to build the sanitized module")
    # the versioned names: the unversioned .so may be a linker script, which cannot be preloaded
    asan, stdcxx = _runtime(cxx, "libasan.so"), _runtime(cxx, "libstdc++.so.6")
    if asan is None or stdcxx is None:
        pytest.skip("g++ has no AddressSanitizer runtime here")
    module = tmp_path / ("_helpers_cpp" + sysconfig.get_config_var("EXT_SUFFIX"))
    build = subprocess.run([cxx, "-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer", "-std=c++17",
                            "-shared", "-fPIC", f"-I{pybind11.get_include()}",
                            f"-I{sysconfig.get_paths()['include']}", os.path.join(ROOT, "csrc", "helpers.cpp"),
                            "-o", str(module)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    # libstdc++ is preloaded too: the sanitizer intercepts C++ exceptions and must find them at start-up
    env = {**os.environ, "LD_PRELOAD": f"{asan} {stdcxx}", "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0"}
    run = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "unit", "_asan_sample_index.py"),
                          str(tmp_path)], capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0 and "asan ok" in run.stdout, (run.stdout[-2000:], run.stderr[-6000:])
    assert "AddressSanitizer" not in run.stderr, run.stderr[-6000:]
