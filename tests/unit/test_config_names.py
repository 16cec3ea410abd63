"""One name per config concept: `head_dim`, `ffn_hidden_size`, `num_kv_heads` and `rotary_dims` read as the resolved
sizes (no second name such as head_size/ffn_size/kv_heads/rotary_size), save as given, and the other names users
may type (the old derived names, Megatron's kv_channels/num_query_groups) are read as aliases. Configs saved by the
version before this change (tests/fixtures/saved_configs, written by its `--preset NAME` job) load to the same
model."""

import os

import pytest
import yaml

from megatron_code.config.cli import parse_args
from megatron_code.config.job import JobConfig
from megatron_code.config.model import ModelConfig
from megatron_code.model import count_parameters

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "saved_configs")

# preset -> (head_dim, num_kv_heads, ffn_hidden_size, rotary_dims, parameters with vocab 1000 where the preset has
# none): the numbers the previous version's head_size, kv_heads, ffn_size, rotary_size and count_parameters gave.
OLD = {"tiny": (32, 4, 512, 16, 924416), "phi-1": (64, 32, 8192, 32, 1418270720),
       "palm-540b": (256, 1, 73728, 256, 540356474880)}


@pytest.mark.parametrize("preset", sorted(OLD))
def test_a_config_saved_by_the_previous_version_loads_to_the_same_model(preset):
    with open(os.path.join(FIXTURES, f"{preset}.yaml")) as f:
        saved = yaml.safe_load(f)
    job = JobConfig.from_dict(saved)
    m = job.model
    m.vocab_size = m.vocab_size or 1000
    assert (m.head_dim, m.num_kv_heads, m.ffn_hidden_size, m.rotary_dims, count_parameters(m)) == OLD[preset]
    # Saved again, every key it had keeps its value (derived sizes stay null where they were null).
    again = JobConfig.from_dict(saved).to_dict()
    for section, values in saved.items():
        if isinstance(values, dict):
            assert {k: again[section][k] for k in values} == values, section


def test_derived_fields_read_resolved_save_as_given_and_follow_later_overrides():
    cfg = ModelConfig(hidden_size=128, num_attention_heads=4)
    assert (cfg.head_dim, cfg.num_kv_heads, cfg.ffn_hidden_size, cfg.rotary_dims) == (32, 4, 512, 32)
    assert {k: cfg.to_dict()[k] for k in ("head_dim", "num_kv_heads", "ffn_hidden_size", "rotary_dims")} == \
        dict.fromkeys(("head_dim", "num_kv_heads", "ffn_hidden_size", "rotary_dims"))
    cfg.update({"hidden_size": 256, "rotary_percent": 0.5})  # a later layer (a --config file, a flag)
    assert (cfg.head_dim, cfg.ffn_hidden_size, cfg.rotary_dims) == (64, 1024, 32)
    cfg.update({"head_dim": 40, "position_embedding": "learned"})
    assert (cfg.head_dim, cfg.given("head_dim"), cfg.rotary_dims) == (40, 40, 0)  # no rotation without RoPE
    assert ModelConfig(num_kv_heads=1).num_kv_heads == 1 and ModelConfig(rotary_dims=8).rotary_dims == 8
    # The print-config / saved form reads back to the same config.
    job = parse_args(["--preset", "tiny"]).job
    assert JobConfig.from_dict(yaml.safe_load(job.to_yaml())).to_dict() == job.to_dict()


def test_old_and_megatron_names_are_aliases_in_yaml_and_dotted_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  head_size: 40\n  ffn_size: 640\n  rotary_size: 8\n  kv_heads: 2\n")
    m = parse_args(["--preset", "tiny", "--config", str(path)]).job.model
    assert (m.head_dim, m.ffn_hidden_size, m.rotary_dims, m.num_kv_heads) == (40, 640, 8, 2)
    assert m.to_dict()["head_dim"] == 40 and "head_size" not in m.to_dict()
    m = parse_args(["--preset", "tiny", "--model.kv_channels", "48", "--model.num_query_groups", "1",
                    "--model.ffn-size", "384"]).job.model
    assert (m.head_dim, m.num_kv_heads, m.ffn_hidden_size) == (48, 1, 384)
    # Megatron's flags for the same fields.
    m = parse_args(["--preset", "tiny", "--kv-channels", "16", "--ffn-hidden-size", "256",
                    "--rotary-percent", "0.25"]).job.model
    assert (m.head_dim, m.ffn_hidden_size, m.rotary_dims) == (16, 256, 4)
    # A misspelling is still refused, naming the field.
    with pytest.raises(Exception, match="head_dim"):
        parse_args(["--preset", "tiny", "--model.head_dmi", "8"])


def test_no_second_name_for_a_resolved_size_in_the_code():
    # The names the code used before for the resolved sizes are gone: every reader says head_dim, ffn_hidden_size,
    # num_kv_heads, rotary_dims.
    for old in ("head_size", "ffn_size", "kv_heads", "rotary_size"):
        assert not isinstance(getattr(ModelConfig, old, None), property), old
