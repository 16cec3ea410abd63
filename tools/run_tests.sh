#!/usr/bin/env bash
# Set up and run the whole test suite (the README's test command). Installs what it needs itself.
#   bash tools/run_tests.sh [extra pytest args]
# Tests run on PYTEST_WORKERS pytest-xdist workers (default 2, the CI machine's cores; PYTEST_WORKERS=0 runs them
# in this one process). A test file runs on one worker; the rules that keep tests safe side by side and the time
# budget are in docs/testing.md.
# The C++ extensions are required here (MEGATRON_CODE_REQUIRE_EXTENSIONS=1, checked by setup.py at build and by
# tests/unit/test_extensions_built.py): a broken compile fails the run instead of skipping the extension tests.
# MEGATRON_CODE_REQUIRE_EXTENSIONS=0 runs the suite on a machine without a compiler.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export MEGATRON_CODE_REQUIRE_EXTENSIONS=${MEGATRON_CODE_REQUIRE_EXTENSIONS:-1}
echo "== installing (torch 2.13.0 CPU wheel, build helpers, this package with test extras)"
$PY -m pip install -q torch==2.13.0
$PY -m pip install -q "setuptools>=64" wheel "pybind11>=2.10"
$PY -m pip install -q --no-build-isolation -e ".[test]"
$PY -c "import megatron_code.data.helpers as h; print('C++ sample-index helpers:', 'built' if h.cpp_available() else 'NOT built (numpy twin in use)')"
# A local SLURM for tests/e2e/test_slurm.py: installs packages, writes /etc/slurm/slurm.conf and leaves root
# daemons running (README, "Two commands"). NO_SLURM=1 skips it; that test then skips itself.
if [[ "${NO_SLURM:-0}" != 1 && -f tools/ci/setup_local_slurm.sh ]]; then
  echo "== local SLURM (for tests/e2e/test_slurm.py)"
  bash tools/ci/setup_local_slurm.sh || echo "SLURM could not be set up here; its test reports why"
fi
# bubblewrap: the evaluation sandbox's backend for non-root users (tests/unit/test_sandbox.py runs it as root and as nobody)
command -v bwrap >/dev/null || apt-get install -y -q bubblewrap >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q bubblewrap >/dev/null 2>&1; } || echo "bubblewrap not installed: the sandbox tests cover the root backend only"
echo "== tests"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false
rc=0
workers=${PYTEST_WORKERS:-2}
$PY -m pytest -q -rs --durations=25 --timeout=900 -n "$workers" --dist loadgroup --no-loadscope-reorder tests "$@" || rc=$?
if [[ $rc -eq 5 ]]; then
  # pytest's "no tests were collected" (a wrong path or -k): nothing was checked, which is not a pass.
  echo "error: pytest collected no tests (exit 5): check the arguments ($*)" >&2
fi
exit $rc
