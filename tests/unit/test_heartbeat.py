"""Heartbeat (parallel/lifecycle.py) on an in-process store: a rank that stops beating is named by the others,
which exit; a rank that ended cleanly (done) is not; the distributed-timeout flag is validated."""

import threading
import time

import pytest
import torch.distributed as dist

from megatron_code.config import ConfigError
from megatron_code.config.cli import parse_args
from megatron_code.parallel import lifecycle
from megatron_code.parallel.lifecycle import Heartbeat


class Exited(Exception):
    pass


@pytest.fixture
def exits(monkeypatch):
    """os._exit replaced: record the code and end the heartbeat thread instead of the test process."""
    codes = []
    event = threading.Event()

    def fake_exit(code):
        codes.append(code)
        event.set()
        raise SystemExit  # ends only the calling (heartbeat) thread

    monkeypatch.setattr(lifecycle.os, "_exit", fake_exit)
    return codes, event


def test_a_silent_rank_is_named_and_the_watcher_exits(exits, capsys):
    codes, event = exits
    store = dist.HashStore()
    watcher = Heartbeat(store, 0, 2, silent_after=0.5, period=0.05).start()
    silent = Heartbeat(store, 1, 2, silent_after=0.5, period=0.05).start()
    time.sleep(0.3)
    silent._stop.set()  # rank 1 stops beating without saying it is done (a stopped or dead process)
    assert event.wait(60), "the silent rank was never reported"
    watcher._stop.set()
    assert codes == [1]
    err = capsys.readouterr().err
    assert "error: rank 1 (" in err and "has not sent a heartbeat" in err and "rank 0 stops now" in err


def test_a_rank_that_ended_cleanly_is_not_reported(exits):
    codes, event = exits
    store = dist.HashStore()
    watcher = Heartbeat(store, 0, 2, silent_after=0.3, period=0.05).start()
    Heartbeat(store, 1, 2, silent_after=0.3, period=0.05).start().stop(done=True)
    assert not event.wait(2.0)  # several bounds long: a clean end is never silence
    watcher.stop(done=True)
    assert codes == []


def test_distributed_timeout_flag():
    assert parse_args(["--distributed-timeout-minutes", "0.5"]).job.parallel.distributed_timeout_minutes == 0.5
    with pytest.raises(ConfigError, match="--distributed-timeout-minutes must be positive"):
        parse_args(["--distributed-timeout-minutes", "0"])


def test_die_with_launcher_only_under_an_agent(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    assert not lifecycle.launched_by_agent()  # pytest's parent is a shell, not a launcher
    assert lifecycle.launched_by_agent({"TORCHELASTIC_RUN_ID": "x"})


def test_a_failed_collective_ends_in_one_line(monkeypatch, capsys):
    import torch.distributed

    from megatron_code import cli_main
    from megatron_code.training import trainer

    def lost_peer(_job):
        raise torch.distributed.DistBackendError("[gloo] Connection closed by peer [127.0.0.1]:1234\nmore detail")

    monkeypatch.setattr(trainer, "pretrain", lost_peer)
    assert cli_main.main(["--preset", "tiny", "--model.vocab_size", "64", "--mock-data"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1 and "communication with another rank failed (DistBackendError: [gloo] Connection closed" \
        in err[0]
