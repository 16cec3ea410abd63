"""One seam to DeepSpeed: every internal name parallel/deepspeed_compat.py touches still exists in the installed
DeepSpeed (the canary: an upgrade fails here, naming what moved), DeepSpeed is pinned to the tested minor version,
and no other module touches an internal name (private methods, optimizer-wrapper attributes, internal module paths,
on-disk keys and file names), found with `ast` in the package, tools/ and pretrain_code.py."""

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

from megatron_code.parallel import deepspeed_compat as dsc

ROOT = Path(__file__).resolve().parents[2]
COMPAT = ROOT / "megatron_code" / "parallel" / "deepspeed_compat.py"


def _resolve(module: str, dotted: str):
    obj = importlib.import_module(module)
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("module,name", dsc.INTERNAL_NAMES, ids=[f"{m}.{n}" for m, n in dsc.INTERNAL_NAMES])
def test_internal_name_still_exists(module, name):
    import deepspeed

    try:
        _resolve(module, name)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"DeepSpeed {deepspeed.__version__} has no {module}.{name} ({exc}): adapt "
                    f"megatron_code/parallel/deepspeed_compat.py (tested with {dsc.TESTED_VERSION})")


@pytest.mark.parametrize("module,cls,attr", dsc.WRAPPER_ATTRIBUTES,
                         ids=[f"{c}.{a}" for _, c, a in dsc.WRAPPER_ATTRIBUTES])
def test_optimizer_wrapper_still_sets_attribute(module, cls, attr):
    source = inspect.getsource(_resolve(module, cls))
    assert f"self.{attr}" in source or f"def {attr}(" in source, (
        f"DeepSpeed's {cls} no longer sets self.{attr}: adapt deepspeed_compat.py")


@pytest.mark.parametrize("module,cls,key", dsc.SAVED_WRAPPER_KEYS, ids=[f"{c}.{k}" for _, c, k in dsc.SAVED_WRAPPER_KEYS])
def test_optimizer_wrapper_still_saves_key(module, cls, key):
    source = inspect.getsource(_resolve(module, cls).state_dict)
    assert f"state_dict['{key}']" in source or f'state_dict["{key}"]' in source, (
        f"DeepSpeed's {cls}.state_dict no longer saves '{key}': adapt deepspeed_compat.py")


def test_on_disk_keys_are_deepspeeds():
    constants = importlib.import_module("deepspeed.checkpoint.constants")
    for name, value in dsc.ON_DISK_KEYS.items():
        assert getattr(constants, name, None) == value, f"deepspeed.checkpoint.constants.{name} is not {value!r}"


def test_deepspeed_is_the_tested_minor_version_and_pinned():
    import deepspeed

    assert deepspeed.__version__.startswith(dsc.TESTED_VERSION + "."), (
        f"DeepSpeed {deepspeed.__version__} is installed; deepspeed_compat.py is tested with {dsc.TESTED_VERSION}")
    major, minor = (int(x) for x in dsc.TESTED_VERSION.split("."))
    assert f'"deepspeed>={major}.{minor},<{major}.{minor + 1}"' in (ROOT / "setup.py").read_text()


# ------------------------------------------------------------------------------------------ nothing outside the seam
PRIVATE_ATTRS = ({n.split(".")[-1] for _, n in dsc.INTERNAL_NAMES if n.split(".")[-1].startswith("_")}
                 | {a for _, _, a in dsc.WRAPPER_ATTRIBUTES if a != "loss_scale"}  # also our config field's name
                 | {"ds_tensor", "ds_pipe_replicated", "_hp_mapping", "refresh_fp32_params",
                    "_lazy_init_hp_params_optimizer_state"})
INTERNAL_MODULES = ("deepspeed.runtime", "deepspeed.ops", "deepspeed.checkpoint")
FILE_NAME = re.compile(r"^(bf16_)?(mp_rank_|zero_pp_rank_|layer_\d)|_states\.pt$")


# Megatron-LM's own checkpoint layout (mp_rank_XX/model_optim_rng.pt), read by the Megatron-LM importer: not
# DeepSpeed's.
NOT_DEEPSPEED = {ROOT / "megatron_code" / "convert" / "megatron_lm.py"}


def _sources() -> list[Path]:
    files = sorted((ROOT / "megatron_code").rglob("*.py")) + sorted((ROOT / "tools").rglob("*.py"))
    skip = NOT_DEEPSPEED | {COMPAT}
    return [p for p in files + [ROOT / "pretrain_code.py"] if p not in skip and p.exists()]


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def touches(source: str) -> list[tuple[int, str]]:
    """(line, what) for every internal DeepSpeed name in `source`."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in PRIVATE_ATTRS:
            found.append((node.lineno, f".{node.attr}"))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith(INTERNAL_MODULES)]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(INTERNAL_MODULES):
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            v = node.value
            if v in PRIVATE_ATTRS or v in dsc.ON_DISK_KEYS.values() or FILE_NAME.search(v):
                found.append((node.lineno, repr(v)))
    return found


def test_the_scanner_finds_each_kind_of_touch():
    sample = ('"""mentions mp_rank_00_model_states.pt in a docstring only"""\n'
              "from deepspeed.runtime.utils import x\nimport deepspeed.ops\n"
              "engine._load_zero_checkpoint(a)\nopt.fp32_groups_flat\nd['param_slice_mappings']\n"
              "f'mp_rank_{r:02d}_model_states.pt'\ngetattr(p, 'ds_pipe_replicated')\n")
    lines = sorted({line for line, _ in touches(sample)})
    assert lines == [2, 3, 4, 5, 6, 7, 8], touches(sample)


def test_no_internal_deepspeed_name_outside_the_compat_module():
    bad = [f"{p.relative_to(ROOT)}:{line} {what}" for p in _sources() for line, what in touches(p.read_text())]
    assert not bad, ("internal DeepSpeed names outside megatron_code/parallel/deepspeed_compat.py (move them there, "
                     "with a comment naming the DeepSpeed behaviour):\n" + "\n".join(bad))
