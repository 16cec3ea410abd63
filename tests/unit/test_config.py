"""Config validation messages (each names the fix), type coercion and the YAML/JSON round trip."""

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_code.config import (ConfigError, DataConfig, JobConfig, ModelConfig, OptimConfig, ParallelConfig,
                                  TrainingConfig, get_preset)


def model(**kw) -> ModelConfig:
    cfg = ModelConfig()
    cfg.update(kw)
    return cfg


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_defaults_validate():
    JobConfig().validate()


def test_heads_not_dividing_hidden():
    with pytest.raises(ConfigError, match=r"num_attention_heads \(3\) does not divide hidden_size \(128\).*head_dim"):
        model(hidden_size=128, num_attention_heads=3).validate()
    # An explicit head_dim makes it legal (PaLM 540B: 48 heads x 256 on 18,432).
    cfg = model(hidden_size=128, num_attention_heads=3, head_dim=40)
    cfg.validate()
    assert cfg.head_dim == 40


def test_kv_heads_not_dividing_heads():
    with pytest.raises(ConfigError, match=r"num_kv_heads \(3\) must divide num_attention_heads \(4\).*MQA"):
        model(num_attention_heads=4, num_kv_heads=3).validate()
    for kv in (1, 2, 4):
        model(num_attention_heads=4, num_kv_heads=kv).validate()


@pytest.mark.parametrize("kw, pattern", [
    (dict(rotary_dims=7), r"rotary dims \(7\) must be even"),
    (dict(rotary_dims=34), r"rotary dims \(34\) exceed head_dim \(32\)"),
    (dict(rotary_percent=0.25, head_dim=30), r"rotary dims \(7\) must be even"),
    (dict(rotary_percent=1.5), r"rotary_percent must be in \(0, 1\]"),
    (dict(rotary_percent=0.01), r"rotary dims resolve to 0"),
])
def test_rotary_dims(kw, pattern):
    with pytest.raises(ConfigError, match=pattern):
        model(hidden_size=128, num_attention_heads=4, **kw).validate()


def test_rotary_dims_ignored_without_rope():
    cfg = model(position_embedding="learned", rotary_dims=7)
    cfg.validate()  # an odd rotary_dims would be refused with RoPE; without it nothing rotates
    assert cfg.rotary_dims == 0


@pytest.mark.parametrize("kw, pattern", [
    (dict(position_embedding="alibi"), "position_embedding must be one of"),
    (dict(norm="batchnorm"), "norm must be one of"),
    (dict(activation="tanh"), "activation must be one of"),
    (dict(block="moe"), "block must be one of"),
    (dict(attention_dropout=1.0), r"attention_dropout must be in \[0, 1\)"),
    (dict(num_layers=0), "num_layers must be positive"),
])
def test_model_enum_and_range_errors(kw, pattern):
    with pytest.raises(ConfigError, match=pattern):
        model(**kw).validate()


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_23_with_pipeline_refused(stage):
    p = ParallelConfig(pipeline_parallel=2, zero_stage=stage)
    with pytest.raises(ConfigError, match=f"ZeRO stage {stage}.*--zero-stage 1"):
        p.validate()
    ParallelConfig(pipeline_parallel=2, zero_stage=1).validate()
    ParallelConfig(pipeline_parallel=1, zero_stage=stage).validate()


def test_parallel_other_errors():
    with pytest.raises(ConfigError, match="--zero-stage must be 0, 1, 2 or 3"):
        ParallelConfig(zero_stage=4).validate()
    with pytest.raises(ConfigError, match="--sequence-parallel needs --tensor-model-parallel-size > 1"):
        ParallelConfig(sequence_parallel=True).validate()


def test_job_level_divisibility():
    job = JobConfig()
    job.update({"model": {"num_attention_heads": 4}, "parallel": {"tensor_parallel": 3}})
    with pytest.raises(ConfigError, match=r"--tensor-model-parallel-size \(3\) must divide num_attention_heads"):
        job.validate()
    job = JobConfig()
    job.update({"model": {"num_layers": 2}, "parallel": {"pipeline_parallel": 4}})
    with pytest.raises(ConfigError, match=r"--pipeline-model-parallel-size \(4\) exceeds num_layers \(2\)"):
        job.validate()


def test_seq_length_beyond_learned_positions():
    job = JobConfig()
    job.update({"model": {"position_embedding": "learned", "max_position_embeddings": 128},
                "data": {"seq_length": 256}})
    with pytest.raises(ConfigError, match=r"--seq-length \(256\) exceeds --max-position-embeddings \(128\)"):
        job.validate()
    job.model.position_embedding = "rope"  # rotary positions extrapolate: allowed
    job.validate()
    job.model.position_embedding = "learned"
    job.data.seq_length = 128
    job.validate()


def test_global_batch_must_be_a_multiple():
    job = JobConfig()
    job.update({"training": {"micro_batch_size": 4, "global_batch_size": 20}})
    with pytest.raises(ConfigError, match=r"--global-batch-size \(20\) must be a multiple.*4 x 2 = 8"):
        job.resolve_batch(data_parallel_size=2)
    assert job.resolve_batch(data_parallel_size=5) == 1
    job.training.global_batch_size = 32
    assert job.resolve_batch(data_parallel_size=2) == 4
    job.training.global_batch_size = None
    assert job.resolve_batch(data_parallel_size=3) == 1
    assert job.training.global_batch_size == 12


def test_unknown_key_with_suggestion():
    job = JobConfig()
    with pytest.raises(ConfigError, match=r"unknown config key 'model.num_layer'.*did you mean num_layers"):
        job.update({"model": {"num_layer": 3}})
    with pytest.raises(ConfigError, match=r"unknown config key 'training.tarin_iters' \(did you mean train_iters"):
        job.update({"training": {"tarin_iters": 3}})
    with pytest.raises(ConfigError, match=r"unknown config section 'modle'"):
        job.update({"modle": {"num_layers": 3}})
    with pytest.raises(ConfigError, match=r"config section 'model' must be a mapping"):
        job.update({"model": 3})


def test_dash_keys_and_type_coercion():
    cfg = ModelConfig()
    cfg.update({"num-layers": "6", "init_std": "2e-2", "bias": "false", "num_kv_heads": "none",
                "rotary_percent": 1})
    assert cfg.num_layers == 6 and isinstance(cfg.num_layers, int)
    assert cfg.init_std == 0.02 and cfg.bias is False and cfg.given("num_kv_heads") is None
    assert isinstance(cfg.rotary_percent, float)
    t = TrainingConfig()
    t.update({"train_iters": "1e3"})
    assert t.train_iters == 1000
    d = DataConfig()
    d.update({"data_path": "0.3 A 0.7 B"})
    assert d.data_path == ["0.3", "A", "0.7", "B"]
    with pytest.raises(ConfigError, match="model.num_layers: expected int, got 'six'"):
        JobConfig().update({"model": {"num_layers": "six"}})
    with pytest.raises(ConfigError, match="^bias: expected true/false"):
        cfg.update({"bias": "maybe"})
    with pytest.raises(ConfigError, match="expected int"):
        cfg.update({"num_layers": 2.5})


def test_optim_and_training_errors():
    with pytest.raises(ConfigError, match=r"--min-lr \(0.1\) must be in \[0, --lr"):
        OptimConfig(lr=0.01, min_lr=0.1).validate()
    with pytest.raises(ConfigError, match="--lr-decay-style must be one of"):
        OptimConfig(lr_decay_style="step").validate()
    with pytest.raises(ConfigError, match="precision must be fp32, bf16 or fp16"):
        TrainingConfig(precision="fp8").validate()
    with pytest.raises(ConfigError, match="--split must look like 969,30,1"):
        DataConfig(split="a,b").validate()


def test_padded_vocab_unknown_names_the_fix():
    with pytest.raises(ConfigError, match="vocab_size is unknown.*--tokenizer-type"):
        _ = ModelConfig().padded_vocab_size


def _nondefault_job() -> JobConfig:
    job = JobConfig()
    job.update({k: v for k, v in get_preset("phi-1-small").items() if k != "source"})
    job.preset = "phi-1-small"
    job.update({"model": {"num_kv_heads": 4, "rotary_base": 500000.0, "init_std": 1e-8},
                "data": {"data_path": ["0.3", "a/b", "0.7", "c"], "split": "949,50,1", "vocab_file": "v.json"},
                "optim": {"lr_warmup_fraction": 0.01, "adam_eps": 1e-6},
                "parallel": {"zero_stage": 2, "deepspeed_config": "ds.json"},
                "training": {"precision": "bf16", "global_batch_size": 64, "save": "out/ckpt"}})
    job.validate()
    return job


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_file_round_trip(tmp_path, suffix):
    job = _nondefault_job()
    path = str(tmp_path / ("job" + suffix))
    job.save(path)
    loaded = JobConfig.load(path)
    assert loaded.to_dict() == job.to_dict()
    assert loaded == job


def test_yaml_text_round_trip():
    job = _nondefault_job()
    again = JobConfig.from_dict(__import__("yaml").safe_load(job.to_yaml()))
    assert again.to_dict() == job.to_dict()
    # Every field of every section is present in the dict (nothing silently dropped).
    d = job.to_dict()
    for section in ("model", "parallel", "optim", "data", "objective", "training"):
        cls = type(getattr(job, section))
        assert set(d[section]) == {f.name for f in dataclasses.fields(cls)}


def _units_job(batch=8, seq=64, **fields) -> JobConfig:
    job = JobConfig()
    job.update({"data": {"seq_length": seq}, "training": {"micro_batch_size": batch, "global_batch_size": batch}})
    for path, value in fields.items():
        section, key = path.split("__")
        setattr(getattr(job, section), key, value)
    return job


@pytest.mark.parametrize("fields, expected", [
    # (fields, (train_iters, lr_warmup_iters, lr_decay_iters)) with global batch 8, seq 64.
    ({}, (100, 0, None)),                                                  # nothing in samples/tokens: untouched
    ({"training__train_samples": 100}, (13, 0, None)),                     # ceil(100 / 8)
    ({"training__train_samples": 96}, (12, 0, None)),                      # exact
    ({"training__train_tokens": 6400}, (13, 0, None)),                     # 6400 / 64 = 100 samples
    ({"training__train_tokens": 6145}, (13, 0, None)),                     # ceil(6145 / 64) = 97 -> ceil(97/8)
    ({"training__train_tokens": 6144}, (12, 0, None)),                     # 96 samples
    ({"training__train_samples": 40, "training__train_tokens": 6400}, (5, 0, None)),     # the smaller wins
    ({"training__train_samples": 400, "training__train_tokens": 6400}, (13, 0, None)),
    ({"optim__lr_decay_samples": 50, "optim__lr_warmup_samples": 0}, (100, 0, 7)),
    ({"optim__lr_decay_tokens": 3200, "optim__lr_decay_samples": 8}, (100, 0, 7)),       # tokens win
    ({"optim__lr_warmup_tokens": 65}, (100, 1, None)),                     # 2 samples -> 1 iteration
    ({"optim__lr_warmup_samples": 17, "optim__lr_warmup_fraction": 0.5}, (100, 3, None)),
])
def test_resolve_units_rounds_up(fields, expected):
    job = _units_job(**fields)
    assert job.resolve_batch(data_parallel_size=1) == 1
    got = (job.training.train_iters, job.optim.lr_warmup_iters, job.optim.lr_decay_iters)
    assert got == expected
    if "optim__lr_warmup_samples" in fields or "optim__lr_warmup_tokens" in fields:
        assert job.optim.lr_warmup_fraction is None  # an explicit warmup replaces the fraction
    job.resolve_units()  # idempotent
    assert (job.training.train_iters, job.optim.lr_warmup_iters, job.optim.lr_decay_iters) == expected


@settings(max_examples=200, deadline=None)
@given(samples=st.integers(1, 10 ** 12), tokens=st.integers(1, 10 ** 15), batch=st.integers(1, 4096),
       seq=st.integers(1, 8192))
def test_resolve_units_never_stops_short(samples, tokens, batch, seq):
    """Rounding up: the run sees at least the requested samples/tokens, and one iteration fewer would not."""
    job = _units_job(batch=batch, seq=seq, training__train_samples=samples, training__train_tokens=tokens)
    job.resolve_units()
    iters = job.training.train_iters
    need = min(samples, math.ceil(tokens / seq))
    assert iters * batch >= need and (iters - 1) * batch < need
    assert iters * batch >= samples or iters * batch * seq >= tokens


def test_resolve_units_needs_the_global_batch():
    job = JobConfig()
    job.training.train_samples = 100
    with pytest.raises(ConfigError, match="need the global batch size"):
        job.resolve_units()
    job.training.micro_batch_size = 4
    job.resolve_batch(data_parallel_size=2)  # global batch 8 from micro x DP
    assert job.training.train_iters == 13


@pytest.mark.parametrize("heads, kv, tp, ok", [
    (8, 8, 4, True), (8, 4, 2, True), (8, 2, 2, True),   # KV heads sharded over TP
    (8, 2, 4, True), (8, 1, 8, True), (8, 2, 8, True),   # fewer KV heads than TP: each replicated
    (12, 3, 2, False),                                   # 3 KV heads cannot be split over 2 ranks
    (12, 3, 4, False),                                   # nor replicated evenly over 4
])
def test_tensor_parallel_and_kv_heads(heads, kv, tp, ok):
    job = JobConfig()
    job.update({"model": {"hidden_size": 16 * heads, "num_attention_heads": heads, "num_kv_heads": kv},
                "parallel": {"tensor_parallel": tp}})
    if ok:
        job.validate()
    else:
        with pytest.raises(ConfigError, match=rf"--tensor-model-parallel-size \({tp}\) does not fit num_kv_heads "
                                              rf"\({kv}\).*replicated.*TP sizes that fit: 1, 3, 6, 12"):
            job.validate()


def test_padded_vocab_must_split_over_tensor_parallel():
    job = JobConfig()
    job.update({"model": {"hidden_size": 96, "num_attention_heads": 6, "ffn_hidden_size": 384, "vocab_size": 200},
                "parallel": {"tensor_parallel": 3}})
    with pytest.raises(ConfigError, match=r"padded vocabulary \(256 rows: 200 rounded up to a multiple of "
                                          r"--make-vocab-size-divisible-by 128\).*--make-vocab-size-divisible-by 384"):
        job.validate()
    job.model.vocab_pad_multiple = 384
    job.validate()
    assert job.model.padded_vocab_size == 384
    job.model.vocab_size = None  # unknown until the tokenizer is read: checked again then
    job.model.vocab_pad_multiple = 128
    job.validate()


@pytest.mark.parametrize("kw, pattern", [
    (dict(loss_scale=-1.0), "--loss-scale must be >= 0"),
    (dict(hysteresis=0), "--loss-scale-window and --hysteresis must be positive"),
    (dict(min_loss_scale=0.0), "--min-loss-scale must be positive"),
    (dict(train_tokens=0), "--train-tokens must be positive"),
    (dict(exit_duration_mins=-1.0), "--exit-duration-in-mins must be >= 0"),
])
def test_training_knob_errors(kw, pattern):
    with pytest.raises(ConfigError, match=pattern):
        TrainingConfig(**kw).validate()
