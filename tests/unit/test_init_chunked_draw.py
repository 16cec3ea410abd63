"""A rank's part of a TP-sharded weight is drawn piece by piece (parallel/sharded_init.draw_narrow) and is bitwise the slice
of the whole draw, so no rank ever holds a full weight (the PaLM-540B word embedding is 18.9 GB in fp32).
Bitwise equality of whole sharded models with the single-process init is in
tests/distributed/test_sharded_init.py; here: the piece arithmetic on awkward shapes, the detection of narrow
shards on real TP layers, and the memory of a TP8 build of a 256k-vocabulary embedding."""

import json
import os
import subprocess
import sys

import pytest
import torch

from megatron_code.parallel.sharded_init import chunked_draws_exact, draw_narrow, narrow_spec

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _whole(shape, dtype, std, seed):
    return torch.empty(shape, dtype=dtype).normal_(0.0, std, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("shape,dim,start,length", [
    ((64, 48), 0, 8, 8), ((64, 48), 1, 24, 24), ((64, 48), 0, 56, 8),
    ((37, 5), 0, 3, 30), ((37, 5), 1, 1, 3),     # 185 elements: not a multiple of 16, tail redrawn
    ((17,), 0, 0, 17), ((17,), 0, 16, 1),        # a last piece under 16 elements is merged into the one before
    ((6, 7, 9), 1, 2, 4), ((6, 7, 9), 2, 0, 3), ((6, 7, 9), 0, 5, 1),
    ((3, 1000), 1, 999, 1),                      # rows larger than a piece
])
@pytest.mark.parametrize("piece", [16, 48, 100, 1 << 24])
def test_piecewise_draw_is_the_slice_of_the_whole_draw(dtype, shape, dim, start, length, piece):
    got = draw_narrow(shape, dtype, 0.02, 1234, dim, start, length, piece=piece)
    want = _whole(shape, dtype, 0.02, 1234).narrow(dim, start, length)
    assert got.shape == want.shape and got.is_contiguous() and got._base is None
    assert torch.equal(got, want)


def test_the_self_check_passes_on_this_torch():
    # If a torch release changes normal_'s stream, init falls back to whole draws (still correct, more memory);
    # this test makes that change visible instead of silent.
    assert all(chunked_draws_exact(dt) for dt in (torch.float32, torch.bfloat16, torch.float16))


def _tp_model(tp, rank, vocab=256, hidden=64):
    from megatron_code.config.model import ModelConfig
    from megatron_code.model import GPT
    from megatron_code.parallel.groups import ParallelGroups
    from megatron_code.parallel.plans import plan_for
    from megatron_code.parallel.tensor_parallel import apply_tensor_parallel

    cfg = ModelConfig(vocab_size=vocab, num_layers=1, hidden_size=hidden, num_attention_heads=8,
                      ffn_hidden_size=2 * hidden, max_position_embeddings=16)
    with torch.device("meta"):
        model = GPT(cfg)
    apply_tensor_parallel(model, plan_for(cfg, tp), ParallelGroups.virtual(tp=tp, rank=rank))
    return cfg, model


def test_every_sharded_tp_weight_is_found_as_one_narrow():
    from megatron_code.model.init import _draws

    _, model = _tp_model(4, 2)
    found = 0
    for name, module in model.named_modules():
        if not _draws(module):
            continue
        p = module.weight
        spec = narrow_spec(module, "weight", getattr(module, "full_param_shape", lambda n: p.shape)("weight"))
        if getattr(p, "tensor_model_parallel", False):
            dim = p.partition_dim
            assert spec == (dim, 2 * p.shape[dim], p.shape[dim]), name
            found += 1
        else:
            assert spec is None, name
    assert found >= 4  # embedding, qkv, o_proj, fc_in, fc_out (the head is tied)


_PEAK_SCRIPT = r"""
import json, resource, sys, torch
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
from test_init_chunked_draw import _tp_model
import megatron_code.parallel.sharded_init as init
from megatron_code.model.init import module_seeds
from megatron_code.parallel.sharded_init import materialize_gpt_params
init.PIECE_ELEMENTS = 1 << 16
cfg, model = _tp_model(8, 3, vocab=262144)
init.chunked_draws_exact(torch.float32)  # its tiny draws happen before the measurement
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
made = materialize_gpt_params(model, cfg, module_seeds(model, torch.Generator().manual_seed(5)))
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
print(json.dumps({{"grown": grown, "made": made * 4, "embedding": 262144 * 64 * 4}}))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss units are Linux's")
def test_tp8_rank_of_a_256k_vocabulary_never_holds_the_full_embedding():
    """Fresh process (a high-water mark from earlier tests would hide the peak): the 64 MiB embedding of a
    262,144 x 64 vocabulary is drawn in 256 KiB pieces and this rank keeps its 8 MiB eighth."""
    script = _PEAK_SCRIPT.format(root=ROOT, tests=os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["made"] < res["embedding"] / 4
    # A whole draw grows the peak by at least the full embedding (64 MiB); pieces by this rank's part and a piece.
    assert res["grown"] < res["embedding"] / 2, res


def test_a_pipeline_stage_materialises_its_layers_through_one_scratch_buffer(monkeypatch):
    """build_pipeline materialises a stage layer by layer; all its layers share one Scratch (one buffer, grown to
    the largest draw), freed with the stage's materialiser. One per layer left the freed buffers in the heap: 92 MB
    of each rank's 1.39 GiB peak in a TP2 x PP2 democratize-300m build (1.30 GiB with one). The layers' values are
    still the single-process init."""
    import megatron_code.parallel.sharded_init as init
    from megatron_code.config.model import ModelConfig
    from megatron_code.model.init import init_gpt_weights
    from megatron_code.model import GPT
    from megatron_code.parallel.pipeline import BlockPipe, _stage_materializer

    made = []

    class CountingScratch(init.Scratch):
        def __init__(self, device):
            made.append(self)
            super().__init__(device)

    monkeypatch.setattr(init, "Scratch", CountingScratch)
    cfg = ModelConfig(vocab_size=256, num_layers=3, hidden_size=64, num_attention_heads=8, ffn_hidden_size=128,
                      max_position_embeddings=16)
    with torch.device("meta"):
        meta = GPT(cfg)
    materialize = _stage_materializer(meta, 7)  # the job seed: module seeds as the single-process build draws
    layers = [BlockPipe(i, meta.layers[i], None, 10000.0) for i in range(cfg.num_layers)]
    for layer in layers:
        materialize(layer)
    assert len(made) == 1, f"{len(made)} scratch buffers for one stage"
    ref = GPT(cfg)
    init_gpt_weights(ref, cfg, torch.Generator().manual_seed(7))
    for i, layer in enumerate(layers):
        for name, p in layer.layers[str(i)].named_parameters():
            assert torch.equal(p, ref.layers[i].get_parameter(name)), f"layers.{i}.{name}"
