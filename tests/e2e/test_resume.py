"""Exact resume: a run interrupted (planned exit or SIGKILL) and resumed gives bitwise the same losses."""

import os
import sys

import pytest

from ._cmd import ROOT, TINY, kill_at_iteration, run, train_losses

pytestmark = pytest.mark.e2e
ITERS = ["--train-iters", "8"]  # noqa: E501


@pytest.fixture(scope="module")
def reference_save(tmp_path_factory):
    """An uninterrupted 8-iteration run's --save directory. Read-only: a test that points a command at it works on
    a copy (`_copy_of_reference`)."""
    save = str(tmp_path_factory.mktemp("ref"))
    run(TINY + ITERS + ["--save", save])
    return save


@pytest.fixture(scope="module")
def reference(reference_save):
    losses = train_losses(reference_save)
    assert sorted(losses) == list(range(1, 9))
    return losses


def _copy_of_reference(reference_save: str, tmp_path) -> str:
    import shutil

    return shutil.copytree(reference_save, str(tmp_path / "run"))


def _tree(root: str) -> dict[str, bytes]:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            out[os.path.relpath(os.path.join(d, f), root)] = open(os.path.join(d, f), "rb").read()
    return out


def test_planned_exit_and_resume_is_bitwise_identical(reference, tmp_path):
    save = str(tmp_path / "run")
    run(TINY + ITERS + ["--save", save, "--exit-interval", "3"])
    assert open(os.path.join(save, "latest")).read().strip() == "iter_0000003"
    assert sorted(train_losses(save)) == [1, 2, 3]
    out = run(TINY + ITERS + ["--save", save, "--load", save])
    assert "resumed from" in out.stdout
    assert train_losses(save) == reference  # exact float equality, every iteration


def test_cyclic_dataloader_trains_in_another_order_and_resumes_exactly(reference, tmp_path):
    """--dataloader-type cyclic: the samples come in a different order than `single` (other losses), and an exit
    mid-epoch (dataset of 64 samples, 8 per iteration) resumes bitwise."""
    cyclic = ["--dataloader-type", "cyclic"]
    ref_save = str(tmp_path / "ref")
    run(TINY + ITERS + cyclic + ["--save", ref_save])
    want = train_losses(ref_save)
    assert want != reference
    save = str(tmp_path / "run")
    run(TINY + ITERS + cyclic + ["--save", save, "--exit-interval", "3"])
    run(TINY + ITERS + cyclic + ["--save", save, "--load", save])
    assert train_losses(save) == want


def test_sigkill_and_resume_is_bitwise_identical(tmp_path):
    # A long budget (400) so the run is still going when killed; --exit-interval stops runs early without
    # changing the LR schedule, which depends on --train-iters only.
    budget = ["--train-iters", "400"]
    ref_save = str(tmp_path / "ref")
    run(TINY + budget + ["--exit-interval", "8", "--save", ref_save])
    reference = train_losses(ref_save)
    save = str(tmp_path / "run")
    cmd = [sys.executable, os.path.join(ROOT, "pretrain_code.py")] + TINY + budget + ["--save", save,
                                                                                     "--save-interval", "2"]
    # kill right after iteration 5: checkpoint 4 exists, 5 is past it
    kill_at_iteration(cmd, os.path.join(save, "metrics.jsonl"), 5)
    latest = int(open(os.path.join(save, "latest")).read().strip().split("_")[1])
    assert 4 <= latest < 8, latest
    before = train_losses(save)
    assert max(before) > latest  # some iterations ran past the checkpoint and are redone after resume
    run(TINY + budget + ["--save", save, "--load", save, "--exit-interval", str(8 - latest)])
    assert {k: v for k, v in train_losses(save).items() if k <= 8} == reference


# The next two point a command at a copy of the reference run's checkpoints (one launch each instead of a training
# run of their own plus the launch; the refusals are the same for a directory trained 1 or 8 iterations).
def test_fresh_run_refuses_to_overwrite_checkpoints(reference_save, tmp_path):
    save = _copy_of_reference(reference_save, tmp_path)
    before = _tree(save)
    out = run(TINY + ["--train-iters", "1", "--save", save], check=False)
    assert out.returncode == 2
    assert "already holds checkpoints" in out.stderr and "--load" in out.stderr
    assert "Traceback" not in out.stderr
    assert _tree(save) == before  # nothing the user had was touched


def test_loading_another_architecture_is_a_clear_error(reference_save, tmp_path):
    save = _copy_of_reference(reference_save, tmp_path)
    out = run(TINY + ["--train-iters", "9", "--load", save, "--model.hidden_size", "32"], check=False)
    assert out.returncode == 2
    assert "different architecture" in out.stderr and "hidden_size" in out.stderr
    assert "Traceback" not in out.stderr


def test_loading_with_another_tokenizer_is_a_clear_error(tmp_path):
    # Two code tokenizers of the same size trained on different text: same shapes, different ids. Resuming with
    # the other one would silently train on re-mapped tokens, so --load refuses and names the fix.
    from megatron_code.data.tokenizer import train_code_tokenizer
    toks = []
    for name, text in (("a", "def f(x):\n    return x + 1\n" * 50), ("b", "SELECT * FROM t WHERE y = 2;\n" * 50)):
        train_code_tokenizer([text], 300, str(tmp_path / name))
        toks.append(["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(tmp_path / name),
                     "--model.vocab_size", "320"])
    save = str(tmp_path / "run")
    run(TINY + toks[0] + ["--train-iters", "1", "--save", save])
    assert run(TINY + toks[0] + ["--train-iters", "2", "--load", save, "--save", save]).returncode == 0
    out = run(TINY + toks[1] + ["--train-iters", "3", "--load", save, "--save", save], check=False)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "different tokenizer" in out.stderr and "--tokenizer-model" in out.stderr
    assert "Traceback" not in out.stderr
