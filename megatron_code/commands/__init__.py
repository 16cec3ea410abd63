"""The command-line programs, one module each with `main(argv=None) -> int`, installed as console scripts
(`megatron-code-*`, listed in setup.py). `tools/NAME.py` is a three-line shim over `commands/NAME.py`, kept so
Megatron-style command lines (`python tools/preprocess_data.py ...`) work from a checkout; `pretrain_code.py` is
the same over `megatron_code/cli_main.py` (`megatron-code-train`)."""
