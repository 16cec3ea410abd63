"""Adam and RNG state of Megatron-LM legacy checkpoints (--ckpt-format torch), against checkpoints written by
Megatron-LM's own training code: their setup_model_and_optimizer, train_step and save_checkpoint, run on CPU by
tests/convert/_mlm_training_peer.py (which lists every CPU redirect) for a tiny GPT after two Adam steps, committed
in tests/fixtures/megatron_lm_legacy (regenerate: MEGATRON_LM_DIR=... python tests/convert/_mlm_training_peer.py
fixtures DIR). Each fixture records their losses of iterations 1-4 and their in-memory Adam state and RNG states
at the save (iteration 2).

* their checkpoint imports with Adam moments, masters and step equal to their optimizer's, the CPU RNG states equal
  to theirs, and our model and optimizer (training/optimizer.py) continue with their losses at iterations 3 and 4;
* our export of it is their files again: the same keys, shapes, dtypes, values, param groups and RNG states;
* with MEGATRON_LM_DIR set: their load_checkpoint (no --no-load-optim / --no-load-rng) loads our export and their
  next two steps give the losses of their uninterrupted run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from megatron_code.convert import megatron_lm as mlm
from megatron_code.model import GPT
from megatron_code.training.optimizer import build_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "megatron_lm_legacy")
PEER = os.path.join(ROOT, "tests", "convert", "_mlm_training_peer.py")
sys.path.insert(0, os.path.dirname(PEER))
import _mlm_training_peer as peer  # noqa: E402  (its top level imports torch only)

sys.path.remove(os.path.dirname(PEER))
CASES = sorted(peer.FIXTURES)
pytest.importorskip("megatron.core", reason="their checkpoints pickle megatron.core objects in 'args': pip install "
                                            "'megatron_code[test]'")


def _layout(name: str) -> dict:
    flags = peer.FIXTURES[name]
    return {"tp": int(flags[flags.index("--tp") + 1]), "pp": int(flags[flags.index("--pp") + 1]),
            "dist": "--dist-opt" in flags, "bf16": "--bf16" in flags}


def _record(name: str) -> dict:
    return torch.load(os.path.join(FIXTURES, name, "record.pt"), weights_only=False)


def _their_state(job, record: dict, index: int, src: str) -> dict[str, torch.Tensor]:
    """Their in-memory per-rank tensors (index 0 exp_avg, 1 exp_avg_sq, 2 fp32 param) as our full tensors."""
    shapes = {}
    for rank in record["moments"]:
        tp, pp = map(int, rank.split("_"))
        name = f"mp_rank_{tp:02d}" if job.parallel.pipeline_parallel == 1 else f"mp_rank_{tp:02d}_{pp:03d}"
        model = torch.load(os.path.join(src, "iter_0000002", name, "model_optim_rng.pt"), weights_only=False)["model"]
        shapes[rank] = {k: v.shape for k, v in model.items() if torch.is_tensor(v)}
    per_rank = {}
    for rank, moments in record["moments"].items():
        tp, pp = map(int, rank.split("_"))
        # the distributed optimizer holds each parameter's state flat (its DP shard; DP is 1 here)
        per_rank[(tp, pp)] = {mlm.canonical(k): v[index].reshape(v[0].shape if v[0].dim() > 1 else shapes[rank][k])
                              for k, v in moments.items()}
    lay = (job.parallel.tensor_parallel, job.parallel.pipeline_parallel)
    full, _ = mlm._gather(job.model, per_rank, *lay, 3.0)
    return mlm.to_ours(job.model, full)


def _continue(job, state) -> dict[int, float]:
    """Iterations 3 and 4 on their batches with our model and our AdamW, from the imported weights and moments;
    a bf16 run computes in bf16 from the fp32 masters, as theirs does."""
    model = GPT(job.model)
    model.load_state_dict(state.module)
    opt = build_optimizer(model, job.optim)
    names = {p: n for n, p in model.named_parameters()}
    for g in opt.param_groups:
        for p in g["params"]:
            opt.state[p] = {"step": torch.tensor(float(state.step)), "exp_avg": state.exp_avg[names[p]].clone(),
                            "exp_avg_sq": state.exp_avg_sq[names[p]].clone()}
    data = peer.batches(job.model.padded_vocab_size, job.data.seq_length)
    half = job.training.precision == "bf16"
    losses = {}
    for i in range(peer.SAVE_AT, peer.TOTAL_ITERS):
        ids, labels = data[i][:, :-1], data[i][:, 1:]
        run = GPT(job.model).to(torch.bfloat16) if half else model
        if half:
            run.load_state_dict(model.state_dict())
        logits = run.train()(ids, torch.arange(ids.shape[1]).expand_as(ids))
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
        loss.backward()
        if half:
            for (n, p), q in zip(model.named_parameters(), run.parameters()):
                p.grad = q.grad.float()
        opt.step()
        opt.zero_grad()
        losses[i + 1] = loss.item()
    return losses


def same_rng(a: dict, b: dict) -> None:
    """Two of Megatron's per-rank rng_state dicts are equal: CPU generators, CUDA state and tracker states."""
    assert a["random_rng_state"] == b["random_rng_state"]
    assert all((x == y).all() if hasattr(x, "all") else x == y for x, y in zip(a["np_rng_state"], b["np_rng_state"]))
    assert torch.equal(a["torch_rng_state"], b["torch_rng_state"])
    assert torch.equal(a["cuda_rng_state"], b["cuda_rng_state"])
    assert set(a["rng_tracker_states"]) == set(b["rng_tracker_states"])
    assert all(torch.equal(v, b["rng_tracker_states"][k]) for k, v in a["rng_tracker_states"].items())


def check_import(src: str, rec: dict, tp: int, pp: int, rel: float, their_state):
    """Their checkpoint `src` (legacy or torch_dist) imports with Adam moments, masters, step and every rank's RNG
    states equal to their in-memory state at the save (`rec`; `their_state(job, i)`: their tensors i = 0 exp_avg,
    1 exp_avg_sq, 2 fp32 param as our full tensors), and our model and AdamW continue with their losses at
    iterations 3 and 4 (within `rel`). Returns the imported job config."""
    job, state = mlm.read_megatron_lm(src)
    assert (job.parallel.tensor_parallel, job.parallel.pipeline_parallel) == (tp, pp)
    assert state.step == 2 and rec["step"] == {2.0} and state.client_state["iteration"] == 2
    for i, ours in enumerate((state.exp_avg, state.exp_avg_sq, state.module)):
        want = their_state(job, i)
        assert set(ours) == set(want)
        for k in want:
            assert torch.equal(ours[k], want[k]), (i, k)
    rng, theirs = state.client_state["rng"], rec["rng"]["0_0"]
    assert rng["python"] == theirs["random_rng_state"] and torch.equal(rng["torch"], theirs["torch_rng_state"])
    assert all((a == b).all() if hasattr(a, "all") else a == b for a, b in zip(rng["numpy"], theirs["np_rng_state"]))
    assert torch.equal(rng["cuda"][0], theirs["cuda_rng_state"])
    kept = state.client_state["megatron_rng"]
    assert set(kept) == {f"{r},{s}" for r in range(tp) for s in range(pp)}
    for key, lst in kept.items():  # every rank's states as their save had them in memory
        r, s = key.split(",")
        assert len(lst) == 1
        same_rng(lst[0], rec["rng"][f"{r}_{s}"])
    losses = _continue(job, state)
    for it in (3, 4):
        assert losses[it] == pytest.approx(rec["losses"][it], rel=rel), (it, losses, rec["losses"])
    return job


@pytest.mark.parametrize("name", CASES)
def test_their_checkpoint_imports_with_their_adam_and_rng_state_and_continues(name):
    rec, lay = _record(name), _layout(name)
    src = os.path.join(FIXTURES, name, "ckpt")
    # measured: fp32 1.1e-7, bf16 <= 3.2e-6 (their micro batches accumulate bf16 gradients in fp32, ours one pass)
    job = check_import(src, rec, lay["tp"], lay["pp"], 2e-5 if lay["bf16"] else 1e-6,
                       lambda job, i: _their_state(job, rec, i, src))
    assert job.training.precision == ("bf16" if lay["bf16"] else "fp32")


def same_tree(a, b, where: str, skip_extra_state: bool = False) -> None:
    """`a` holds what `b` holds, recursively: same keys, lengths, tensor dtypes, shapes and values.
    `skip_extra_state`: b's `*_extra_state` keys (local-spec linears' None extra state) are not required in a."""
    if isinstance(b, dict):
        assert isinstance(a, dict), where
        want = {k for k in b if not (skip_extra_state and str(k).endswith("_extra_state"))}
        assert set(a) == want, (where, set(a) ^ want)
        for k in want:
            same_tree(a[k], b[k], f"{where}.{k}", skip_extra_state)
    elif isinstance(b, (list, tuple)):
        assert isinstance(a, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same_tree(x, y, f"{where}[{i}]", skip_extra_state)
    elif torch.is_tensor(b):
        assert torch.is_tensor(a) and a.dtype == b.dtype and a.shape == b.shape, (where, a.dtype, b.dtype)
        assert torch.equal(a, b), where
    elif hasattr(b, "dtype") and hasattr(b, "shape"):  # numpy arrays of the RNG state
        assert (a == b).all(), where
    else:
        assert a == b, (where, a, b)


@pytest.mark.parametrize("name", CASES)
def test_our_export_is_their_checkpoint_again(name, tmp_path):
    """Import then export at their layout: every rank's model_optim_rng.pt (and distrib_optim.pt) holds what their
    save_checkpoint wrote, values included (the args Namespace aside: ours carries the fields their loader reads)."""
    lay = _layout(name)
    src = os.path.join(FIXTURES, name, "ckpt")
    job, state = mlm.read_megatron_lm(src)
    out = tmp_path / "out"
    mlm.write_megatron_lm(job, state.module, str(out), lay["tp"], lay["pp"], iteration=2,
                          consumed=state.client_state["consumed_samples"],
                          optim={"exp_avg": state.exp_avg, "exp_avg_sq": state.exp_avg_sq}, step=state.step,
                          client_state=state.client_state, distributed_optimizer=lay["dist"])
    ranks = sorted(os.listdir(os.path.join(src, "iter_0000002")))
    assert sorted(os.listdir(out / "iter_0000002")) == ranks
    for rank in ranks:
        for f in sorted(os.listdir(os.path.join(src, "iter_0000002", rank))):
            theirs = torch.load(os.path.join(src, "iter_0000002", rank, f), weights_only=False)
            ours = torch.load(out / "iter_0000002" / rank / f, weights_only=False)
            if isinstance(theirs, dict) and "args" in theirs:
                theirs = {k: v for k, v in theirs.items() if k not in ("args", "rerun_state_machine")}
                ours = {k: v for k, v in ours.items() if k != "args"}
            same_tree(ours, theirs, f"{rank}/{f}", skip_extra_state=True)


@pytest.mark.skipif(not os.environ.get("MEGATRON_LM_DIR"),
                    reason="MEGATRON_LM_DIR not set: their load_checkpoint needs megatron.training (not on PyPI); the "
                           "export's structure and values are checked against their committed files above")
@pytest.mark.parametrize("name", CASES)
def test_their_load_checkpoint_continues_our_export_with_their_losses(name, tmp_path):
    """ours (imported from their run) -> our export -> their load_checkpoint with optimizer and RNG -> their steps
    3 and 4 give the losses their own resume of their own checkpoint gives (recorded in the fixture; equal to the
    uninterrupted run's except in bf16 with the distributed optimizer, 2e-5 apart at iteration 4), from the Adam
    state and RNG states we wrote."""
    lay, rec = _layout(name), _record(name)
    src = os.path.join(FIXTURES, name, "ckpt")
    ours_dir = tmp_path / "ours"
    from megatron_code.commands.convert_checkpoint import main
    assert main(["--from", "megatron-lm", "--load", src, "--save", str(ours_dir)]) == 0
    out = tmp_path / "mlm"
    assert main(["--to", "megatron-lm", "--load", str(ours_dir), "--save", str(out),
                 "--tensor-model-parallel-size", str(lay["tp"]), "--pipeline-model-parallel-size", str(lay["pp"]),
                 *(["--use-distributed-optimizer"] if lay["dist"] else [])]) == 0
    flags = peer.FIXTURES[name]
    r = subprocess.run([sys.executable, PEER, "load", str(out), str(tmp_path / "loaded"), *flags], cwd=ROOT,
                       env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    got = torch.load(tmp_path / "loaded.pt", weights_only=False)
    assert got["step"] == {2.0}
    for it in (3, 4):  # what a resume of their own checkpoint gives (their code, recorded with the fixture)
        want = rec["resumed_losses"][it]
        assert got["losses"][it] == pytest.approx(want, rel=1e-6, abs=1e-6), (it, got["losses"], want)
    for rank, theirs in rec["rng"].items():  # the RNG states their load restored are the ones their save had
        back = got["rng"][rank]
        assert back["random_rng_state"] == theirs["random_rng_state"]
        assert torch.equal(back["torch_rng_state"], theirs["torch_rng_state"])
        assert torch.equal(back["cuda_rng_state"], theirs["cuda_rng_state"])
        assert all(torch.equal(back["rng_tracker_states"][k], v) for k, v in theirs["rng_tracker_states"].items())


def test_unrecognised_group_layout_is_refused_in_one_line(tmp_path, capsys):
    """A param-group layout the rules do not give (here: their two groups swapped) is refused, never guessed;
    --no-load-optim converts the weights alone."""
    import shutil

    from megatron_code.commands.convert_checkpoint import main

    src = tmp_path / "ckpt"
    shutil.copytree(os.path.join(FIXTURES, "tp1pp1_fp32", "ckpt"), src)
    path = src / "iter_0000002" / "mp_rank_00" / "model_optim_rng.pt"
    ck = torch.load(path, weights_only=False)
    ck["optimizer"]["param_groups"].reverse()
    torch.save(ck, path)
    with pytest.raises(mlm.MegatronCheckpointError, match="not the group .* rules give"):
        mlm.read_megatron_lm(str(src))
    assert main(["--from", "megatron-lm", "--load", str(src), "--save", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--no-load-optim" in err
    assert main(["--from", "megatron-lm", "--load", str(src), "--save", str(tmp_path / "b"), "--no-load-optim"]) == 0
    assert "--no-load-optim" in capsys.readouterr().out


@pytest.mark.skipif(not os.environ.get("MEGATRON_LM_DIR"),
                    reason="MEGATRON_LM_DIR not set: their load_checkpoint needs megatron.training (not on PyPI)")
def test_their_load_checkpoint_takes_an_export_of_our_own_run(tmp_path):
    """A run trained here (their fixture's shape and schedule, our CLI) exported with its Adam and RNG state: their
    load_checkpoint (without --no-load-optim / --no-load-rng) holds exactly our moments and CPU RNG states, and
    their next steps train on (finite losses)."""
    from megatron_code.commands.convert_checkpoint import main
    from megatron_code.config.job import JobConfig
    from megatron_code.parallel.reshard import read_full_state

    s = peer.SHAPE
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "pretrain_code.py"),
                        "--num-layers", str(s["num_layers"]), "--hidden-size", str(s["hidden_size"]),
                        "--num-attention-heads", str(s["num_attention_heads"]), "--group-query-attention",
                        "--num-query-groups", str(s["num_query_groups"]), "--ffn-hidden-size", str(s["ffn_hidden_size"]),
                        "--swiglu", "--normalization", "RMSNorm", "--position-embedding-type", "rope",
                        "--untie-embeddings-and-output-weights", "--disable-bias-linear", "--seq-length", str(s["seq"]),
                        "--max-position-embeddings", str(s["seq"]), "--model.vocab_size", str(s["vocab"]),
                        "--make-vocab-size-divisible-by", "1", "--mock-data", "--micro-batch-size", "2",
                        "--global-batch-size", "4", "--lr", "1e-3", "--min-lr", "1e-3", "--lr-decay-style", "constant",
                        "--weight-decay", "0.1", "--adam-beta2", "0.95", "--train-iters", str(peer.TOTAL_ITERS),
                        "--exit-interval", str(peer.SAVE_AT), "--hidden-dropout", "0", "--attention-dropout", "0",
                        "--eval-interval", "0", "--training.progress_bar", "false", "--save", str(run)],
                       cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "mlm"
    assert main(["--to", "megatron-lm", "--load", str(run), "--save", str(out)]) == 0
    r = subprocess.run([sys.executable, PEER, "load", str(out), str(tmp_path / "loaded"), "--tp", "1", "--pp", "1"],
                       cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                       timeout=1800)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    got = torch.load(tmp_path / "loaded.pt", weights_only=False)
    tag = f"iter_{peer.SAVE_AT:07d}"
    job = JobConfig.load(str(run / tag / "config.yaml"))
    from megatron_code.training.optimizer import param_groups
    with torch.device("meta"):
        m = GPT(job.model)
    names = {id(p): n for n, p in m.named_parameters()}
    order = [names[id(p)] for g in param_groups(m, job.optim.weight_decay) for p in g["params"]]
    ours = read_full_state(str(run / tag), job, opt_order=order)
    assert got["step"] == {float(ours.step)} and got["iteration"] == peer.SAVE_AT
    theirs = {mlm.canonical(k): v for k, v in got["moments"]["0_0"].items()}
    for i, s_ in enumerate(("exp_avg", "exp_avg_sq")):
        back = mlm.to_ours(job.model, {k: v[i] for k, v in theirs.items()})
        assert all(torch.equal(back[k], getattr(ours, s_)[k]) for k in back), s_
    rng = got["rng"]["0_0"]
    assert torch.equal(rng["torch_rng_state"], ours.client_state["rng"]["torch"])
    assert rng["random_rng_state"] == ours.client_state["rng"]["python"]
    assert sorted(got["losses"]) == [3, 4] and all(0 < v < 10 for v in got["losses"].values())
