"""Ctrl-C during training: the first SIGINT asks for a stop at the next iteration boundary (the trainer saves
first, as for SIGTERM); a second one interrupts at once; pretrain_code.py ends either way in one line."""

import os
import signal

import pytest

from megatron_code import cli_main
from megatron_code.training.guards import StopSignal


def test_first_ctrl_c_requests_a_stop_second_interrupts(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")  # the note is printed by global rank 0 (other tests may leave RANK set)
    before = signal.getsignal(signal.SIGINT)
    with StopSignal() as stop:
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            pytest.fail("the first Ctrl-C interrupted at once: the run stops without saving")
        assert stop.received == signal.SIGINT  # the trainer saves and stops at the next iteration boundary
        assert "press Ctrl-C again" in capsys.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_interrupt_outside_the_loop_is_one_line(monkeypatch, capsys):
    def interrupted(_argv):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli_main, "parse_args", interrupted)
    try:
        assert cli_main.main(["--preset", "tiny"]) == 130
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped: the user sees a traceback")
    err = capsys.readouterr().err
    assert err.startswith("interrupted (Ctrl-C)") and "--load" in err
