"""The one base class of every error a user can cause and fix (a bad path, a config that cannot work, a corrupt
file, a checkpoint from another model). Its message names the fix; command-line entry points print it as one line
(`megatron_code/cli_main.py`), never as a traceback. Imports nothing, so every layer can use it."""


class UserError(Exception):
    """A problem the user can fix; the message says how. Subclasses also derive from the builtin error they
    stand for (ValueError, FileNotFoundError, RuntimeError), so callers catching those keep working."""
