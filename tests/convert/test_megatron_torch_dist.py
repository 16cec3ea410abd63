"""Megatron-LM ``--ckpt-format torch_dist`` checkpoints against Megatron-LM's own training code: their
setup_model_and_optimizer, train_step, save_checkpoint and load_checkpoint (megatron.training, core_v0.16.1), run on
CPU with gloo by tests/convert/_mlm_training_peer.py (which lists every CPU redirect). The committed fixture
tests/fixtures/megatron_lm_torch_dist/tp1pp1_fp32 was written by their save_checkpoint after two Adam steps of a tiny
GPT (regenerate: MEGATRON_LM_DIR=... python tests/convert/_mlm_training_peer.py dist-fixtures DIR); its record.pt
holds their losses of iterations 1-4 and their in-memory Adam state and RNG states at the save (iteration 2).

* their checkpoint imports with Adam moments, weights and step equal to their optimizer's, the RNG states equal to
  theirs (CPU generators as ours, every rank's list kept for a re-export), and our model and optimizer continue
  with their losses at iterations 3 and 4;
* our export of it is their checkpoint again: the same DCP keys, shapes, dtypes and values, the same rng_state
  object, and common.pt with the same entries (optimizer common part, scheduler, content_metadata, iteration);
* with MEGATRON_LM_DIR set: their load_checkpoint (neither --no-load-optim nor --no-load-rng) loads our export, at
  the layout written (RNG restored) and at TP2 x PP2 from an export for TP2 x PP2, and their steps 3 and 4 give the
  losses of their uninterrupted run; a fresh torch_dist save of theirs at TP1 x PP1 and at TP2 x PP2 imports here
  with its Adam and RNG state and our run continues with their losses."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from megatron_code.convert import megatron_lm as mlm
from megatron_code.convert import megatron_torch_dist as mtd

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "megatron_lm_torch_dist", "tp1pp1_fp32")
PEER = os.path.join(ROOT, "tests", "convert", "_mlm_training_peer.py")
sys.path.insert(0, os.path.dirname(PEER))
# our model and AdamW on their batches (iterations 3-4), as for the legacy fixtures
from test_megatron_lm_state import check_import, same_rng as _same_rng, same_tree as _same  # noqa: E402

sys.path.remove(os.path.dirname(PEER))

pytest.importorskip("megatron.core", reason="their checkpoints pickle megatron.core objects in 'args': pip install "
                                            "'megatron_code[test]'")
NEEDS_MLM = pytest.mark.skipif(not os.environ.get("MEGATRON_LM_DIR"),
                               reason="MEGATRON_LM_DIR not set: their save_checkpoint/load_checkpoint need "
                                      "megatron.training (not on PyPI); the committed fixture's tests cover the "
                                      "import and the export's structure")


def _their_state(job, rec: dict, index: int, tp: int, pp: int) -> dict[str, torch.Tensor]:
    """Their in-memory per-rank tensors (index 0 exp_avg, 1 exp_avg_sq, 2 fp32 param) as our full tensors."""
    per_rank = {tuple(map(int, rank.split("_"))): {mlm.canonical(k): v[index] for k, v in m.items()}
                for rank, m in rec["moments"].items()}
    return mlm.to_ours(job.model, mlm._gather(job.model, per_rank, tp, pp, 3.0)[0])


def _check_import(src: str, rec: dict, tp: int, pp: int, rel: float) -> None:
    check_import(src, rec, tp, pp, rel, lambda job, i: _their_state(job, rec, i, tp, pp))


def test_their_torch_dist_checkpoint_imports_with_adam_and_rng_and_continues():
    rec = torch.load(os.path.join(FIXTURE, "record.pt"), weights_only=False)
    assert mtd.is_torch_dist(os.path.join(FIXTURE, "ckpt", "iter_0000002"))
    _check_import(os.path.join(FIXTURE, "ckpt"), rec, 1, 1, 1e-5)


def _dcp(tag_dir: str) -> tuple[dict, dict]:
    """(metadata by key: ('tensor', shape, dtype) or ('bytes',), every value loaded)."""
    import io

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = dcp.FileSystemReader(tag_dir)
    meta = reader.read_metadata().state_dict_metadata
    kinds = {k: ("tensor", tuple(m.size), m.properties.dtype) if isinstance(m, TensorStorageMetadata) else ("bytes",)
             for k, m in meta.items()}
    values = {k: torch.empty(m.size, dtype=m.properties.dtype) if isinstance(m, TensorStorageMetadata) else io.BytesIO()
              for k, m in meta.items()}
    dcp.load(values, storage_reader=reader, no_dist=True)
    return kinds, values


def test_our_export_is_their_torch_dist_checkpoint_again(tmp_path):
    """Import then export: every DCP entry their save_checkpoint wrote (model, Adam state, _extra_state objects,
    rng_state) is in ours with the same shape, dtype and value, and nothing else; common.pt has the same entries
    (args aside: ours carries the fields their loader reads, compared below) and metadata.json the same backend."""
    src = os.path.join(FIXTURE, "ckpt")
    job, state = mlm.read_megatron_lm(src)
    path = mtd.write_torch_dist(job, state.module, str(tmp_path / "out"), iteration=2,
                                consumed=state.client_state["consumed_samples"],
                                optim={"exp_avg": state.exp_avg, "exp_avg_sq": state.exp_avg_sq}, step=state.step,
                                client_state=state.client_state)
    theirs_dir = os.path.join(src, "iter_0000002")
    (k_theirs, v_theirs), (k_ours, v_ours) = _dcp(theirs_dir), _dcp(path)
    assert k_ours == k_theirs, set(k_ours.items()) ^ set(k_theirs.items())
    assert "rng_state/shard_0.0_1.1" in k_ours
    _same(v_ours, v_theirs, "dcp")
    theirs = torch.load(os.path.join(theirs_dir, "common.pt"), weights_only=False)
    ours = torch.load(os.path.join(path, "common.pt"), weights_only=False)
    assert set(ours) == set(theirs)
    _same({k: v for k, v in ours.items() if k != "args"}, {k: v for k, v in theirs.items() if k != "args"}, "common")
    for f in ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "ffn_hidden_size",
              "padded_vocab_size", "seq_length", "max_position_embeddings", "tensor_model_parallel_size",
              "pipeline_model_parallel_size", "ckpt_format", "consumed_train_samples", "swiglu", "normalization",
              "position_embedding_type", "untie_embeddings_and_output_weights", "add_position_embedding", "bf16"):
        assert getattr(ours["args"], f) == getattr(theirs["args"], f), f
    assert open(os.path.join(path, "metadata.json")).read() == open(os.path.join(theirs_dir, "metadata.json")).read()
    assert open(tmp_path / "out" / mlm.TRACKER).read() == "2"
    # and back: our export imports to the same state
    _, back = mlm.read_megatron_lm(str(tmp_path / "out"))
    assert back.step == 2 and all(torch.equal(back.exp_avg_sq[k], v) for k, v in state.exp_avg_sq.items())
    _same(back.client_state["megatron_rng"], state.client_state["megatron_rng"], "rng")


def _peer(*argv) -> None:
    r = subprocess.run([sys.executable, PEER, *map(str, argv)], cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]


@NEEDS_MLM
@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 2)])
def test_their_load_checkpoint_continues_our_torch_dist_export(tp, pp, tmp_path):
    """fixture -> ours -> our torch_dist export for TP x PP -> their load_checkpoint at TP x PP with optimizer and RNG
    -> their steps 3 and 4 give the losses of their uninterrupted run (TP1 x PP1 exactly; TP2 x PP2 reshards our
    global tensors and sums in another order), and the RNG states they restored are the ones we wrote."""
    from megatron_code.commands.convert_checkpoint import main

    rec = torch.load(os.path.join(FIXTURE, "record.pt"), weights_only=False)
    ours = tmp_path / "ours"
    assert main(["--from", "megatron-lm", "--load", os.path.join(FIXTURE, "ckpt"), "--save", str(ours)]) == 0
    out = tmp_path / "mlm"
    assert main(["--to", "megatron-lm", "--ckpt-format", "torch_dist", "--load", str(ours), "--save", str(out),
                 "--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size", str(pp)]) == 0
    _peer("load", out, tmp_path / "loaded", "--tp", tp, "--pp", pp, "--ckpt-format", "torch_dist", "--shape", "tiny")
    got = torch.load(tmp_path / "loaded.pt", weights_only=False)
    assert got["step"] == {2.0}
    exact = (tp, pp) == (1, 1)
    for it in (3, 4):
        assert got["losses"][it] == pytest.approx(rec["losses"][it], rel=0 if exact else 1e-5), (it, got["losses"])
    written = mtd.read_rng(str(out / "iter_0000002"))
    assert set(got["rng"]) == {f"{r}_{s}" for r in range(tp) for s in range(pp)}
    for rank, back in got["rng"].items():
        r, s = rank.split("_")
        _same_rng(back, written[f"{r},{s}"][0])
    _same_rng(got["rng"]["0_0"], rec["rng"]["0_0"])  # rank (0, 0)'s are their run's own


@NEEDS_MLM
@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 2)])
def test_their_fresh_torch_dist_save_imports_and_continues(tp, pp, tmp_path):
    out = tmp_path / "theirs"
    _peer("save", out, "--tp", tp, "--pp", pp, "--ckpt-format", "torch_dist")
    rec = torch.load(out / "record.pt", weights_only=False)
    _check_import(str(out / "ckpt"), rec, tp, pp, 1e-5)


@NEEDS_MLM
def test_their_bf16_torch_dist_save_round_trips_through_ours(tmp_path):
    """bf16 (Float16OptimizerWithFloat16Params: bf16 weights, fp32 masters in optimizer.state.fp32_param): their save
    imports with masters, moments, step and RNG equal to their in-memory state; exported again (bf16 weights, fp32
    masters, rng_state), their load_checkpoint continues with exactly the losses of their uninterrupted run."""
    from megatron_code.commands.convert_checkpoint import main

    out = tmp_path / "theirs"
    _peer("save", out, "--bf16", "--ckpt-format", "torch_dist")
    rec = torch.load(out / "record.pt", weights_only=False)
    job, state = mlm.read_megatron_lm(str(out / "ckpt"))
    assert job.training.precision == "bf16" and state.step == 2
    for i, ours in enumerate((state.exp_avg, state.exp_avg_sq, state.module)):
        want = _their_state(job, rec, i, 1, 1)
        assert all(torch.equal(ours[k], want[k]) for k in want), i
    _same_rng(state.client_state["megatron_rng"]["0,0"][0], rec["rng"]["0_0"])
    ours = tmp_path / "ours"
    assert main(["--from", "megatron-lm", "--load", str(out / "ckpt"), "--save", str(ours)]) == 0
    back = tmp_path / "mlm"
    assert main(["--to", "megatron-lm", "--ckpt-format", "torch_dist", "--load", str(ours), "--save", str(back)]) == 0
    kinds, _ = _dcp(str(back / "iter_0000002"))
    theirs, _ = _dcp(str(out / "ckpt" / "iter_0000002"))
    assert kinds == theirs, set(kinds.items()) ^ set(theirs.items())
    _peer("load", back, tmp_path / "loaded", "--bf16", "--ckpt-format", "torch_dist")
    got = torch.load(tmp_path / "loaded.pt", weights_only=False)
    assert got["step"] == {2.0}
    for it in (3, 4):
        assert got["losses"][it] == rec["losses"][it], (it, got["losses"], rec["losses"])
    _same_rng(got["rng"]["0_0"], rec["rng"]["0_0"])


@NEEDS_MLM
def test_their_distributed_optimizer_torch_dist_save_imports(tmp_path):
    """--use-distributed-optimizer (bf16): their torch_dist save holds the Adam state as 'dp_reshardable' DDP buckets;
    it imports with fp32 masters, moments, step and RNG equal to their in-memory state."""
    out = tmp_path / "theirs"
    _peer("save", out, "--dist-opt", "--bf16", "--ckpt-format", "torch_dist")
    rec = torch.load(out / "record.pt", weights_only=False)
    job, state = mlm.read_megatron_lm(str(out / "ckpt"))
    assert job.training.precision == "bf16" and state.step == 2 and rec["step"] == {2.0}
    for i, ours in enumerate((state.exp_avg, state.exp_avg_sq, state.module)):
        want = _their_state(job, rec, i, 1, 1)
        assert set(ours) == set(want) and all(torch.equal(ours[k], want[k]) for k in want), i
    _same_rng(state.client_state["megatron_rng"]["0,0"][0], rec["rng"]["0_0"])
