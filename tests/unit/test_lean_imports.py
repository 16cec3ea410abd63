"""Costs every process or trainer pays, kept down. Programs that do not compute with torch do not import it:
`import torch` costs about 2 s of CPU per process (and DeepSpeed plus torch._dynamo, which torch.optim pulls in,
another ~1.7 s); the data tools run many times per pipeline, and the test suite starts hundreds of processes
(docs/testing.md, "Cost"). The CPU peak probe behind MFU runs once per process."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# One fresh interpreter: each program's work on a tiny input, then the modules it left behind.
PROBE = r"""
import contextlib, io, json, os, sys
tmp = sys.argv[1]
from megatron_code.data.tokenizer import train_code_tokenizer
docs = [f"def f{i}(x):\n    return x + {i}\n" for i in range(40)]
with open(os.path.join(tmp, "c.jsonl"), "w") as f:
    f.write("".join(json.dumps({"text": d}) + "\n" for d in docs))
train_code_tokenizer(docs, 300, os.path.join(tmp, "tok"))
from megatron_code.cli_main import main as train
from megatron_code.commands.merge_datasets import main as merge
from megatron_code.commands.preprocess_data import main as preprocess
codes = {}
out, err = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    codes["preprocess"] = preprocess(["--input", os.path.join(tmp, "c.jsonl"), "--output-prefix",
                                      os.path.join(tmp, "a"), "--tokenizer-type", "HuggingFaceTokenizer",
                                      "--tokenizer-model", os.path.join(tmp, "tok"), "--no-progress"])
    codes["merge"] = merge(["--input", os.path.join(tmp, "a_text_document"), os.path.join(tmp, "a_text_document"),
                            "--output-prefix", os.path.join(tmp, "m")])
    codes["train --help"] = train(["--help"])
    codes["train, a mistyped flag"] = train(["--preset", "tiny", "--mock-data", "--train-iterz", "3"])
print(json.dumps({"codes": codes, "stderr": err.getvalue(),
                  "heavy": sorted(m for m in ("torch", "deepspeed", "transformers") if m in sys.modules)}))
"""


def test_data_tools_and_a_rejected_command_line_do_not_import_torch(tmp_path):
    import json

    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    # the programs did their work (exit 0, files written) or refused the mistake (exit 2, the closest flag named)
    assert got["codes"] == {"preprocess": 0, "merge": 0, "train --help": 0, "train, a mistyped flag": 2}, got
    assert "--train-iters" in got["stderr"], got["stderr"]
    assert os.path.getsize(tmp_path / "m.bin") == 2 * os.path.getsize(tmp_path / "a_text_document.bin") > 0
    assert got["heavy"] == [], f"imported without being used: {got['heavy']}"


def test_the_cpu_peak_probe_runs_once_per_process_and_thread_count(monkeypatch):
    """Every trainer reports MFU against the CPU matmul probe (~0.2 s of CPU); a process that builds several trainers
    (training phases, the distributed tests' jobs) measures once per thread count, not once per trainer."""
    import torch

    from megatron_code.training import metrics

    calls = []
    real = torch.matmul
    monkeypatch.setattr(torch, "matmul", lambda a, b: calls.append(a.shape) or real(a, b))
    metrics._matmul_peak.cache_clear()
    first = metrics.peak_flops("fp32", None)
    assert first[1] == "CPU matmul probe (torch.float32)" and first[0] > 0
    n = len(calls)
    assert n == 6  # warm-up + 5 timed repeats
    assert metrics.peak_flops("fp32", None) == first and len(calls) == n
    assert metrics.peak_flops("fp32", 2.0) == (2e12, "--training.peak_tflops") and len(calls) == n
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        metrics.peak_flops("fp32", None)
        assert len(calls) == 2 * n  # another thread count is another peak
    finally:
        torch.set_num_threads(threads)
