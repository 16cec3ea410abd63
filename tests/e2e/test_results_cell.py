"""One cell of RESULTS.md re-run with its script: the first training losses of a recorded run (a 3-step run: ~15 s
of CPU plus ~10 s of data preparation) come out bitwise equal on the CPU type and torch the results were recorded
with, and within 1e-4 on another (other fp32 kernels, e.g. AVX2 vs AVX-512 paths, round differently).

~30 s of CPU (90 s of wall time on the loaded 2-core machine), over the suite's budget for one test: it runs only
with RESULTS_CELL=1 (`RESULTS_CELL=1 pytest tests/e2e/test_results_cell.py`)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
spec = importlib.util.spec_from_file_location("experiments", os.path.join(ROOT, "examples", "experiments",
                                                                          "experiments.py"))
experiments = importlib.util.module_from_spec(spec)
spec.loader.exec_module(experiments)

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not os.environ.get("RESULTS_CELL"), reason="re-runs one "
                                                  "RESULTS.md cell (~30 s of CPU): set RESULTS_CELL=1")]


def _without_length(args: list[str]) -> list[str]:
    """The arguments with the run length, evaluation interval and save directory blanked."""
    return [a if i == 0 or args[i - 1] not in ("--train-iters", "--eval-interval", "--save") else "-"
            for i, a in enumerate(args)]


def test_one_cell_reruns_to_its_recorded_value(tmp_path):
    """objectives, AR, seed 1: the script's own command at 3 steps gives the recorded first training losses (the
    first steps do not depend on the run length: warm-up is linear in the step, the data order is one epoch's)."""
    path = os.path.join(experiments.RESULTS_DIR, "objectives.json")
    if not os.path.exists(path):
        pytest.fail("examples/experiments/results/objectives.json is missing: RESULTS.md's AR/FIM/MIM table has no "
                    "raw result")
    result = json.load(open(path))
    rec = next(r for r in result["runs"] if r["arm"] == "ar" and r["seed"] == 1)
    work = str(tmp_path)
    subprocess.run([sys.executable, "tools/prepare_stdlib_corpus.py", "--output-dir", os.path.join(work, "corpus")],
                   cwd=ROOT, check=True, capture_output=True)
    if experiments.sha256(os.path.join(work, "corpus", "train.jsonl")) != result["data_sha256"]["corpus/train.jsonl"]:
        pytest.skip(f"this Python's standard library ({sys.version.split()[0]}) is another corpus than the one "
                    f"recorded (Python {result['machine']['python']}): no cell can be compared")
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "examples/experiments/experiments.py", "run", "objectives", "--arms", "ar",
                          "--seeds", "1", "--iters", "3", "--jobs", "1", "--work", work], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    again = json.load(open(os.path.join(work, "objectives.json")))["runs"][0]
    assert again["args"][again["args"].index("--train-iters") + 1] == "3"
    assert _without_length(again["args"]) == _without_length(rec["args"])  # the recorded command, shorter
    same_arith = all(result["machine"][k] == experiments.machine()[k] for k in ("cpu_capability", "torch"))
    if same_arith:  # bitwise
        assert again["first_train_losses"] == rec["first_train_losses"][:3]
        assert again["valid"][0] == rec["valid"][0]
    else:
        assert again["first_train_losses"] == pytest.approx(rec["first_train_losses"][:3], abs=1e-4)
