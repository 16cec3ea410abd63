"""`pretrain_code.py --help` prints usage (how the layers combine, presets, every accepted flag) instead of failing
as an unknown flag."""

from megatron_code.cli_main import main


def test_help_prints_usage_instead_of_an_unknown_flag_error(capsys):
    for flag in ("--help", "-h"):
        assert main(["--preset", "tiny", flag]) == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: pretrain_code.py") and "--print-config" in out
        assert "tiny" in out and "--data-path" in out and "--data-args-path" in out and "--no-bias-gelu-fusion" in out
