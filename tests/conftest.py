"""Shared fixtures: a tiny model config and deterministic torch state. Kept small on purpose."""

import pytest
import torch

from megatron_code.config import ModelConfig


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests use tiny tensors: on a shared 2-core machine extra intra-op threads only add contention (measured
    10-30x slower under load). Multi-process and e2e tests set their children's threads themselves."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _seed_torch():
    """Every test starts from the same RNG state, so a failure reproduces on re-run."""
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_model_cfg():
    """A factory for small ModelConfigs: tiny_model_cfg(**overrides) -> validated ModelConfig.

    Defaults: 2 layers, hidden 64, 4 heads of 16, vocab 200 (padded to 256), RoPE on all dims, no dropout."""

    def make(**overrides):
        values = dict(num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=128, vocab_size=200,
                      max_position_embeddings=64, position_embedding="rope")
        values.update(overrides)
        cfg = ModelConfig()
        cfg.update(values)
        cfg.validate()
        return cfg

    return make
