"""The layering rules of docs/architecture.md, enforced on the source with `ast` (nothing is imported):
dependencies point one way and no module grows past ~600 lines. Lazy imports inside functions count too."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "megatron_code"
MAX_LINES = 600


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in the file, relative imports resolved against its package."""
    tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.append((node.lineno, prefix))
            # `from . import parallel` names a submodule: record it too.
            found += [(node.lineno, f"{prefix}.{alias.name}") for alias in node.names]
    return found


def py_files(sub: str) -> list[Path]:
    return sorted((PACKAGE / sub).rglob("*.py"))


def violations(sub: str, banned: tuple[str, ...]) -> list[str]:
    out = []
    for path in py_files(sub):
        for line, mod in imports_of(path):
            if any(mod == b or mod.startswith(b + ".") for b in banned):
                out.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {mod}")
    return out


def test_import_resolver_sees_relative_and_lazy_imports():
    # The rules below are only as good as this resolver: check it on every import form, as if in model/gpt.py.
    src = ("import torch.distributed as dist\nfrom .. import parallel\nfrom ..training.trainer import x\n"
           "from .attention import Attention\n"
           "def f():\n    import deepspeed\n    from ..parallel import layers\n")
    mods = {m for _, m in imports_of(PACKAGE / "model" / "gpt.py", src)}
    assert {"torch.distributed", "megatron_code.parallel", "megatron_code.training.trainer", "deepspeed",
            "megatron_code.parallel.layers", "megatron_code.model.attention"} <= mods
    init_mods = {m for _, m in imports_of(PACKAGE / "model" / "__init__.py", "from .gpt import GPT\n")}
    assert "megatron_code.model.gpt" in init_mods


def test_model_knows_nothing_of_distribution():
    assert py_files("model")
    bad = violations("model", ("torch.distributed", "deepspeed", "megatron_code.parallel", "megatron_code.training"))
    assert not bad, "model/ must not import distribution code:\n" + "\n".join(bad)


# Words of distributed training: process ranks and groups, collectives, ZeRO, pipeline stages, partitions,
# materialising parts of a model. Found as "_"/camel-case parts of the identifiers, attribute names, keywords
# and short strings of model/'s code (docstrings and comments may explain how parallel/ uses the model).
DISTRIBUTION_WORDS = {"rank", "ranks", "world", "distributed", "deepspeed", "dist", "group", "groups", "collective",
                      "reduce", "gather", "scatter", "broadcast", "barrier", "zero3", "ds", "partition",
                      "partitioned", "partitions", "pipeline", "pipe", "stage", "stages", "materialize",
                      "materialise", "tp", "pp", "dp", "mpu", "narrow", "chunked", "scratch"}


# Named places where parallel/ plugs into the model, holding no distribution code themselves.
MODEL_SEAMS = {
    "parallel_reduce",  # the parallel block's nn.Identity that a TP plan replaces by its one all-reduce (plans.py)
}


def code_words(path: Path) -> list[tuple[int, str, str]]:
    """(line, word, identifier) for every word of every name the code uses (not docstrings or comments)."""
    import re

    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Name):
            names.append(node.id)
        elif isinstance(node, ast.Attribute):
            names.append(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.arg):
            names.append(node.arg)
        elif isinstance(node, ast.keyword) and node.arg:
            names.append(node.arg)
        elif isinstance(node, ast.alias):
            names.append(node.asname or node.name)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"[\w.]{1,40}",
                                                                                            node.value):
            names.append(node.value)  # getattr(module, "name") and the like
        for name in names:
            for word in re.split(r"[_.]+|(?<=[a-z0-9])(?=[A-Z])", name):
                if word:
                    out.append((getattr(node, "lineno", 0), word.lower(), name))
    return out


def test_model_holds_no_distribution_aware_code():
    # Chunked draws of a rank's part, meta materialisation, ZeRO-3 ranges live in parallel/sharded_init.py; the
    # model asks a module that holds part of a weight to draw it (`draw_normal`) and knows no more.
    assert py_files("model")
    bad = [f"{path.relative_to(PACKAGE.parent)}:{line} {name}" for path in py_files("model")
           for line, word, name in code_words(path) if word in DISTRIBUTION_WORDS and name not in MODEL_SEAMS]
    assert not bad, "model/ must hold no distribution-aware code:\n" + "\n".join(bad)
    # The rule sees what it must: the old init's names would fail it.
    old = "def materialize_gpt_params(root, scratch):\n    return draw_narrow(dp_rank, init_flat_part)\n"
    words = {w for _, w, _ in code_words_of(old)}
    assert {"materialize", "scratch", "narrow", "dp", "rank"} <= words & DISTRIBUTION_WORDS


def code_words_of(source: str) -> list[tuple[int, str, str]]:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(source)
    try:
        return code_words(Path(f.name))
    finally:
        Path(f.name).unlink()


ABOVE_DATA_AND_KERNELS = tuple(f"megatron_code.{p}" for p in
                               ("model", "parallel", "training", "inference", "evaluation", "convert", "curation",
                                "commands"))


@pytest.mark.parametrize("sub", ["data", "kernels"])
def test_data_and_kernels_import_nothing_above_them(sub):
    assert py_files(sub)
    bad = violations(sub, ABOVE_DATA_AND_KERNELS)
    assert not bad, f"{sub}/ must not import from higher layers:\n" + "\n".join(bad)


def test_config_imports_nothing_above_it():
    above = tuple(f"megatron_code.{p.name}" for p in PACKAGE.iterdir()
                  if p.is_dir() and p.name not in ("config", "__pycache__"))
    above += ("torch.distributed", "deepspeed")
    bad = violations("config", above)
    assert not bad, "config/ must import nothing above it:\n" + "\n".join(bad)


def test_no_file_over_size_limit():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        n = len(path.read_text().splitlines())
        if n > MAX_LINES:
            offenders.append(f"{path.relative_to(PACKAGE.parent)}: {n} lines")
    assert not offenders, f"files over {MAX_LINES} lines (split them by concept):\n" + "\n".join(offenders)


OBJECTIVE_CODE = ("megatron_code.data.objectives", "megatron_code.training")


def test_parallel_imports_no_objective_code():
    # parallel/ applies distribution to a model; which tensors a loss reads and how it scores them is the
    # objective's (training/objective.py): the pipeline carries the label entries the objective names.
    assert py_files("parallel")
    bad = violations("parallel", OBJECTIVE_CODE)
    assert not bad, "parallel/ must not import objective code:\n" + "\n".join(bad)


def test_nothing_imports_the_programs():
    # commands/ is the top: each program's main wires the layers together; a library module importing one would
    # pull a command line into the engine.
    bad = [v for sub in [p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "commands"]
           for v in violations(sub, ("megatron_code.commands",))]
    assert not bad, "only entry points may import megatron_code.commands:\n" + "\n".join(bad)


def test_data_holds_no_logit_code():
    # data/ works on tokens and batches; functions of logits (losses, their splits) belong to training/losses.py.
    offenders = []
    for path in py_files("data"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and any(a.arg == "logits" for a in node.args.args):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}(logits, ...)")
    assert not offenders, "data/ must work on data only:\n" + "\n".join(offenders)


def test_every_error_class_is_a_user_error():
    # One base (megatron_code.errors.UserError) lets every entry point print user errors as one line; an error
    # class outside it would surface as a traceback.
    import importlib
    import inspect

    from megatron_code.errors import UserError

    outside = []
    for path in sorted(PACKAGE.rglob("*.py")):
        # testing/: the test helper's own errors; remote/: code written into HF exports (imports transformers);
        # evaluation/_wire.py: how a sandboxed solution failed, reported as a result, never raised to the user
        if "testing" in path.parts or "remote" in path.parts or path.name == "_wire.py":
            continue
        tree = ast.parse(path.read_text())
        names = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
        if not names:
            continue
        module = importlib.import_module(module_name(path))
        for name in names:
            cls = getattr(module, name)
            if inspect.isclass(cls) and issubclass(cls, BaseException) and not issubclass(cls, UserError):
                outside.append(f"{module_name(path)}.{name}")
    assert not outside, "error classes not derived from UserError:\n" + "\n".join(outside)
