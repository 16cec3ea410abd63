"""Shared fixtures: a tiny model config and deterministic torch state. Kept small on purpose."""

import os

import pytest
import torch

from megatron_code.config import ModelConfig


def _root(groups: dict, x: str) -> str:
    while groups.setdefault(x, x) != x:
        x = groups[x]
    return x


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook turns xdist_group marks into scheduling groups
def pytest_collection_modifyitems(config, items):
    """Under `pytest -n N --dist loadgroup` (tools/run_tests.sh) a test file runs on one worker, so a module-scoped
    fixture is built once, not once per worker; files using the same session-scoped fixture of a conftest
    (`tiny_checkpoint`, `curated`) share a worker too, for the same reason. A test's own
    `pytest.mark.xdist_group(name)` wins (e.g. "slurm": every test using the local SLURM on one worker).
    See docs/testing.md."""
    groups: dict[str, str] = {}  # union-find over file paths and "fixture:NAME" nodes
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        path = item.nodeid.split("::")[0]
        info = getattr(item, "_fixtureinfo", None)  # doctest items have none
        for name, defs in (info.name2fixturedefs.items() if info else ()):
            if any(d.scope == "session" and d.baseid for d in defs):  # baseid "": a plugin's (tmp_path_factory)
                a, b = _root(groups, path), _root(groups, "fixture:" + name)
                if a != b:
                    groups[max(a, b)] = min(a, b)
    for item in items:
        if not item.get_closest_marker("xdist_group"):
            # xdist appends "@GROUP" to the test's id in reports: keep it short ("e2e/test_resume")
            group = _root(groups, item.nodeid.split("::")[0]).removeprefix("tests/").removesuffix(".py")
            item.add_marker(pytest.mark.xdist_group(group))
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Groups holding a `slow` test go first (tools/run_tests.sh passes --no-loadscope-reorder, so xdist hands
        # out groups in this order): a long test left for last keeps one worker busy while the other idles (the
        # quick start was last, alone, in a run ordered by group size). Deterministic, as every worker must agree.
        slow = {item.get_closest_marker("xdist_group").args[0] for item in items if item.get_closest_marker("slow")}
        items.sort(key=lambda item: item.get_closest_marker("xdist_group").args[0] not in slow)


LAUNCHER_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _launcher_environment():
    """An in-process run (launch_environment(), a world-1 Trainer) writes RANK/WORLD_SIZE/MASTER_* into
    os.environ; left there they decide the rank and port of whatever test this worker runs next. Put them back as
    they were before the test."""
    before = {k: os.environ.get(k) for k in LAUNCHER_KEYS}
    yield
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


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
