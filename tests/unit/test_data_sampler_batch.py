"""Sampler (DP ranks, resume from consumed_samples) and make_batch."""

import numpy as np
import pytest
import torch

from megatron_code.data.batch import make_batch
from megatron_code.data.gpt_dataset import GPTDataset
from megatron_code.data.indexed import IndexedDataset, IndexedDatasetWriter
from megatron_code.data.sampler import PretrainingSampler, SamplerError


def test_dp_ranks_partition_each_global_micro_batch():
    per_rank = [list(PretrainingSampler(40, 0, 3, r, 2)) for r in range(2)]
    assert per_rank[0][0] == [0, 1, 2] and per_rank[1][0] == [3, 4, 5]
    flat = sorted(i for r in per_rank for mb in r for i in mb)
    assert flat == list(range(36))  # 40 // 6 full chunks, incomplete tail dropped
    assert len(PretrainingSampler(40, 0, 3, 0, 2)) == 6
    tail = [list(PretrainingSampler(40, 36, 3, r, 2, drop_last=False)) for r in range(2)]
    assert tail == [[[36, 37]], [[38, 39]]]


@pytest.mark.parametrize("dp", [1, 2, 4])
def test_resume_matches_uninterrupted(dp):
    total, mbs = 200, 2
    full = [list(PretrainingSampler(total, 0, mbs, r, dp)) for r in range(dp)]
    consumed = 3 * mbs * dp * 5  # e.g. 5 steps of 3 micro batches
    resumed = [list(PretrainingSampler(total, consumed, mbs, r, dp)) for r in range(dp)]
    steps_done = consumed // (mbs * dp)
    for r in range(dp):
        assert resumed[r] == full[r][steps_done:]


def test_resume_at_dataset_level(tmp_path):
    """Tokens consumed after a resume equal those of an uninterrupted run (dataset + sampler)."""
    rng = np.random.default_rng(0)
    with IndexedDatasetWriter(str(tmp_path / "d"), np.uint16) as w:
        for _ in range(30):
            w.add_document(rng.integers(1, 500, int(rng.integers(2, 40))).tolist() + [0])
    ids = IndexedDataset(str(tmp_path / "d"))
    mbs, dp, steps, gbs = 2, 2, 12, 8

    def run(consumed, n_steps, built_for):
        ds = GPTDataset(ids, (0, 30), 16, 1234, num_samples=built_for)
        out = []
        samplers = [iter(PretrainingSampler(len(ds), consumed, mbs, r, dp)) for r in range(dp)]
        for _ in range(n_steps * gbs // (mbs * dp)):
            out.append([ds[i]["tokens"].tolist() for s in samplers for i in next(s)])
        return out

    uninterrupted = run(0, steps, steps * gbs)
    first = run(0, 5, steps * gbs)
    resumed = run(5 * gbs, steps - 5, steps * gbs)
    assert first + resumed == uninterrupted
    # resuming into a run that was extended (built for more samples) still continues identically
    extended = run(5 * gbs, steps - 5, 3 * steps * gbs)
    assert extended == resumed


def test_sampler_errors():
    with pytest.raises(SamplerError, match="dp_rank"):
        PretrainingSampler(10, 0, 1, 2, 2)
    with pytest.raises(SamplerError, match="already used every sample"):
        PretrainingSampler(10, 10, 1, 0, 1)
    with pytest.raises(SamplerError, match="no samples"):
        PretrainingSampler(0, 0, 1, 0, 1)


def test_make_batch_basic():
    tokens = torch.tensor([[5, 6, 0, 7, 8, 0, 9], [1, 2, 3, 4, 5, 6, 7]])
    b = make_batch(tokens, eod=0)
    assert b["input_ids"].tolist() == [[5, 6, 0, 7, 8, 0], [1, 2, 3, 4, 5, 6]]
    assert b["labels"].tolist() == [[6, 0, 7, 8, 0, 9], [2, 3, 4, 5, 6, 7]]
    assert b["loss_mask"].dtype == torch.float32 and b["loss_mask"].eq(1).all()
    assert b["position_ids"].tolist() == [list(range(6))] * 2


def test_make_batch_eod_mask_and_reset_positions():
    tokens = torch.tensor([[5, 6, 0, 7, 8, 0, 9], [0, 2, 3, 0, 0, 6, 7]])
    b = make_batch(tokens, eod=0, eod_mask_loss=True, reset_position_ids=True)
    assert b["loss_mask"].tolist() == [[1, 1, 0, 1, 1, 0], [0, 1, 1, 0, 0, 1]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2], [0, 0, 1, 2, 0, 0]]
    with pytest.raises(ValueError, match="seq_length"):
        make_batch(torch.zeros(3, dtype=torch.long), eod=0)


def test_make_batch_reset_attention_mask_matches_megatrons_loop():
    tokens = torch.tensor([[5, 6, 0, 7, 8, 0, 9], [0, 2, 3, 0, 0, 6, 7], [1, 2, 3, 4, 5, 6, 7]])
    b = make_batch(tokens, eod=0, reset_attention_mask=True)
    assert "attention_mask" not in make_batch(tokens, eod=0)
    got = b["attention_mask"]
    assert got.dtype == torch.bool and got.shape == (3, 1, 6, 6)
    # Megatron's definition: start from all-True (causality is the attention's job) and, for every EOD input at
    # position i, forbid positions after i from attending to positions up to and including i.
    want = torch.ones(3, 1, 6, 6, dtype=torch.bool)
    for row in range(3):
        for i in (b["input_ids"][row] == 0).nonzero().flatten().tolist():
            want[row, 0, i + 1:, :i + 1] = False
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    assert torch.equal(got & causal, want & causal)


def _tiny_rope_gpt():
    from megatron_code.config import ModelConfig
    from megatron_code.model import GPT
    cfg = ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=64, vocab_size=50,
                      max_position_embeddings=16, position_embedding="rope")
    cfg.validate()
    model = GPT(cfg)
    model.init_weights(torch.Generator().manual_seed(0))
    return model.eval()


def test_reset_attention_mask_makes_packed_documents_independent():
    # With reset positions and attention, the logits of a packed sample's second document equal those of the
    # same document run alone: nothing leaks across the EOD.
    model = _tiny_rope_gpt()
    doc1, doc2 = [7, 8, 9, 0], [11, 12, 13, 14, 15]
    b = make_batch(torch.tensor([doc1 + doc2 + [16]]), eod=0, reset_position_ids=True, reset_attention_mask=True)
    packed = model(b["input_ids"], b["position_ids"], mask=b["attention_mask"])  # (1, 9, V)
    alone = model(torch.tensor([doc2]))
    assert torch.allclose(packed[0, len(doc1):], alone[0], atol=1e-5)
    leaky = model(b["input_ids"], b["position_ids"])  # reset positions only: the second document sees the first
    assert not torch.allclose(leaky[0, len(doc1):], alone[0], atol=1e-3)


def test_pipeline_stages_apply_the_document_mask_like_the_model():
    # The pipeline passes (B, S) document ids between stages and each block rebuilds the mask: chaining the stage
    # modules must give the GPT's masked forward exactly.
    from megatron_code.parallel.pipeline import BlockPipe, EmbeddingPipe, FinalNormPipe, to_pipeline_batch
    model = _tiny_rope_gpt()
    cfg = model.cfg
    b = make_batch(torch.tensor([[7, 8, 0, 11, 12, 13, 0, 15, 16], [1, 2, 3, 4, 0, 5, 6, 7, 8]]), eod=0,
                   reset_attention_mask=True)
    inputs, _ = to_pipeline_batch(b)
    assert len(inputs) == 3 and torch.equal(inputs[2], b["document_ids"])
    x = EmbeddingPipe(model.embed)(inputs)
    for i, block in enumerate(model.layers):
        x = BlockPipe(i, block, cfg.rotary_dims, cfg.rotary_base)(x)
    piped = model.logits(FinalNormPipe(model.final_norm)(x))
    assert torch.allclose(piped, model(b["input_ids"], b["position_ids"], mask=b["attention_mask"]), atol=1e-6)
    assert not torch.allclose(piped, model(b["input_ids"], b["position_ids"]), atol=1e-3)  # the mask mattered


# --- --dataloader-type cyclic (Megatron's random sampler) ----------------------------------------------------

def _take(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("sharding", [True, False])
@pytest.mark.parametrize("dp", [1, 2, 3])
def test_cyclic_epochs_are_permutations_and_ranks_are_disjoint(sharding, dp):
    from megatron_code.data.sampler import RandomPretrainingSampler

    total, mbs = 23, 2
    usable = total - total % (mbs * dp)
    per_epoch = usable // (mbs * dp)  # micro batches per rank per epoch
    runs = [_take(RandomPretrainingSampler(total, 0, mbs, r, dp, data_sharding=sharding), 3 * per_epoch)
            for r in range(dp)]
    for e in range(3):
        epoch = [i for r in range(dp) for b in runs[r][e * per_epoch:(e + 1) * per_epoch] for i in b]
        assert sorted(epoch) == list(range(usable)), e  # every usable sample once per epoch, across the ranks
        if sharding:  # rank r stays inside its own contiguous share
            share = usable // dp
            for r in range(dp):
                got = [i for b in runs[r][e * per_epoch:(e + 1) * per_epoch] for i in b]
                assert all(r * share <= i < (r + 1) * share for i in got)
    assert all(len(b) == mbs for r in runs for b in r)
    assert runs[0][:per_epoch] != runs[0][per_epoch:2 * per_epoch]  # epochs differ


def test_cyclic_order_is_megatrons_randperm_of_the_epoch():
    """Megatron's sharded random sampler: rank r walks r * bucket + randperm(bucket, seed=epoch)."""
    from megatron_code.data.sampler import RandomPretrainingSampler

    total, mbs, dp = 40, 2, 2
    bucket = total // dp
    for r in range(dp):
        got = [i for b in _take(RandomPretrainingSampler(total, 0, mbs, r, dp), 2 * bucket // mbs) for i in b]
        want = [r * bucket + i for e in range(2)
                for i in torch.randperm(bucket, generator=torch.Generator().manual_seed(e)).tolist()]
        assert got == want


@pytest.mark.parametrize("sharding", [True, False])
def test_cyclic_resume_anywhere_equals_uninterrupted(sharding):
    from megatron_code.data.sampler import RandomPretrainingSampler

    total, mbs, dp = 30, 3, 2
    for r in range(dp):
        full = _take(RandomPretrainingSampler(total, 0, mbs, r, dp, data_sharding=sharding), 25)
        for steps in (1, 4, 5, 6, 11, 17):  # 5 micro batches per rank per epoch: mid-epoch and boundaries
            resumed = _take(RandomPretrainingSampler(total, steps * mbs * dp, mbs, r, dp, data_sharding=sharding),
                            25 - steps)
            assert resumed == full[steps:], (r, steps)


def test_cyclic_errors():
    from megatron_code.data.sampler import RandomPretrainingSampler

    with pytest.raises(SamplerError, match="fewer than one global micro batch"):
        RandomPretrainingSampler(3, 0, 2, 0, 2)
    with pytest.raises(SamplerError, match="multiple of"):
        RandomPretrainingSampler(30, 3, 2, 0, 2)


def test_make_loader_uses_cyclic_for_training_only():
    from megatron_code.config.cli import parse_args
    from megatron_code.data.sampler import RandomPretrainingSampler
    from megatron_code.training.data import make_loader

    job = parse_args(["--preset", "tiny", "--mock-data", "--model.vocab_size", "64", "--micro-batch-size", "2",
                      "--global-batch-size", "4", "--dataloader-type", "cyclic", "--no-data-sharding"]).job
    assert job.data.dataloader_type == "cyclic" and job.data.data_sharding is False
    data = list(range(10))
    train = make_loader(data, job, 4, 1, 2, collate=list, train=True)
    assert isinstance(train.batch_sampler, RandomPretrainingSampler) and not train.batch_sampler.data_sharding
    assert isinstance(make_loader(data, job, 0, 1, 2, collate=list).batch_sampler, PretrainingSampler)
    with pytest.raises(Exception, match="single or cyclic|choose from single, cyclic"):
        parse_args(["--preset", "tiny", "--dataloader-type", "external"])
