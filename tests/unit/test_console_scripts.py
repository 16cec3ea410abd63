"""Every console script in setup.py resolves to a `main` that answers --help (called as pip's wrapper calls it:
no arguments, the script's name in sys.argv[0]); every tools/*.py program and pretrain_code.py is a shim over one of
them and answers --help the same way when run by path."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def console_scripts() -> dict[str, str]:
    """name -> "module:function", read from setup.py's CONSOLE_SCRIPTS without running setup.py."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["CONSOLE_SCRIPTS"]:
            entries = ast.literal_eval(node.value)
            return {name.strip(): target.strip() for name, target in (e.split("=") for e in entries)}
    raise AssertionError("setup.py defines no CONSOLE_SCRIPTS")


def shims() -> dict[str, str]:
    """program path -> the module whose main it runs."""
    out = {"pretrain_code.py": "megatron_code.cli_main"}
    out.update({f"tools/{p.name}": f"megatron_code.commands.{p.stem}" for p in sorted((ROOT / "tools").glob("*.py"))})
    return out


# One process for all of them (each import of torch costs seconds on a loaded machine): for every console script,
# call its function as pip's wrapper does; for every shim, run the file as `python FILE --help` does.
PROBE = r"""
import contextlib, importlib, io, json, runpy, sys
scripts, files = json.loads(sys.argv[1]), json.loads(sys.argv[2])
result = {}
def run(key, argv0, call):
    out = io.StringIO()
    sys.argv = [argv0, "--help"]
    with contextlib.redirect_stdout(out):
        try:
            code = call()
        except SystemExit as exc:
            code = exc.code
    result[key] = [code or 0, out.getvalue()]
for name, target in scripts.items():
    module, func = target.split(":")
    run(name, name, lambda: getattr(importlib.import_module(module), func)())
for path in files:
    run(path, path, lambda: runpy.run_path(path, run_name="__main__"))
print(json.dumps(result))
"""


def probe(scripts, files) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(scripts), json.dumps(files)], cwd=ROOT,
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_program_has_one_console_script_and_every_script_answers_help():
    scripts, programs = console_scripts(), shims()
    assert all(name.startswith("megatron-code-") for name in scripts)
    targets = {t.split(":")[0] for t in scripts.values()}
    assert len(targets) == len(scripts), "two console scripts run the same program"
    missing = {path for path, module in programs.items() if module not in targets}
    assert not missing, f"programs without a console script in setup.py: {sorted(missing)}"
    for path, module in programs.items():
        # A shim holds no logic: it imports its program's main and runs it.
        tree = ast.parse((ROOT / path).read_text())
        defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assert not defs, f"{path} defines {[d.name for d in defs]}: program code belongs in {module}"
        assert f"from {module} import main" in (ROOT / path).read_text(), path

    result = probe(scripts, sorted(programs))
    for name, (code, out) in result.items():
        assert code == 0, f"{name} --help exited {code}"
        assert out.startswith("usage:"), f"{name} --help printed {out[:200]!r}"
    for name in scripts:
        # argparse names the program after argv[0]: the console script's own name.
        if scripts[name] != "megatron_code.cli_main:main":
            assert result[name][1].startswith(f"usage: {name} "), result[name][1][:200]
    # The shim and its console script print the same help, but for the program's name.
    for path, module in programs.items():
        name = next(n for n, t in scripts.items() if t.split(":")[0] == module)
        # (whitespace folded: argparse wraps the usage line by the name's length)
        shim_help, script_help = (" ".join(result[k][1].replace(os.path.basename(path), name).split())
                                  for k in (path, name))
        assert shim_help == script_help, path
